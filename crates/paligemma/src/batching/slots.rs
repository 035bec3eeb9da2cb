//! KV slots for ragged decode steps a CUDA graph can replay.
//!
//! A captured graph replays the same kernels on the same buffers, so a continuous batch whose
//! rows each own a cache of their own size (the eager ragged step, [`crate::batching`]) cannot
//! be captured. Here the running rows live in one cache of `slots` sequences × `capacity`
//! positions, like llama.cpp's server slots; row `i` of a step is slot `i`, at its own position
//! with its own masks (`FixedStep::step_rows`). A step of `m` rows runs the graph of the
//! smallest bucket (1, 2, 4, 8, 16, 32) that holds them, over the first `bucket` slots, the
//! spare ones padded; so a batch has at most six graphs, each captured once.
//!
//! - **Joining**: a row prefills into its own cache as before; at its first step its positions
//!   are copied into the first free slot, and its own cache is released.
//! - **Leaving**: the rows behind it move down one slot each at the next step (a copy of their
//!   positions), so the rows always fill slots `0..m` and the bucket stays the smallest.
//! - **Capacity**: every slot spans the longest request's positions, rounded up to
//!   [`CAPACITY_STEP`]; a longer request grows the pool by half again (its graphs are then
//!   captured anew). Attention spans the whole capacity with the unused positions masked, so a
//!   tight capacity is a fast step.
//! - **Budget**: the pool has as many slots as the KV budget holds at that capacity, up to
//!   `max_batch`'s bucket (`rows_within`); a request is admitted only while the running rows
//!   and it fit, and waits (FIFO) otherwise. One larger than the whole budget runs alone.
//!
//! Off CUDA the same steps run kernel by kernel ([`StepMode::FixedShapes`]); the tests compare
//! them with the eager ragged step.

use candle_core::Tensor;

use super::{RowHandler, Scheduler};
use crate::decode_step::{FixedStep, RowPosition, StepMode, CAPACITY_STEP};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{PaliGemma, Session};

/// The batch sizes that get a graph of their own.
pub const BUCKETS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// The smallest bucket that holds `rows` (past the last bucket, `rows` itself).
pub fn bucket_for(rows: usize) -> usize {
    BUCKETS.iter().copied().find(|&b| b >= rows).unwrap_or(rows)
}

/// A running row as the pool sees it.
pub(crate) struct PooledRow<'a> {
    /// Its slot, `None` until its first pooled step.
    pub(crate) slot: &'a mut Option<usize>,
    /// Its session: the prefilled cache that the first step copies into a slot.
    pub(crate) session: &'a mut Session,
    /// The positions it may reach: prompt + `max_new_tokens`.
    pub(crate) positions: usize,
}

#[derive(Debug, Clone, Copy)]
struct Occupant {
    /// Positions written.
    len: usize,
    prefix_len: usize,
    sliding: bool,
}

/// See the module documentation.
pub struct SlotPool {
    cache: KvCache,
    occupants: Vec<Option<Occupant>>,
    /// Per bucket: its view of the first slots and its step (and graph, once captured).
    steps: Vec<(usize, KvCache, FixedStep)>,
    mode: StepMode,
    /// Whether the last step was replayed from a captured graph.
    replayed: bool,
}

impl SlotPool {
    /// Room for `slots` rows of `positions` positions (rounded up to [`CAPACITY_STEP`]).
    pub fn new(model: &PaliGemma, slots: usize, positions: usize, mode: StepMode) -> Result<Self> {
        let t = &model.config().text;
        let capacity = positions.max(1).div_ceil(CAPACITY_STEP) * CAPACITY_STEP;
        let cache = KvCache::new(model.decoder().num_layers(), slots.max(1), t.num_key_value_heads, t.head_dim, capacity, model.dtype(), model.device())?;
        Ok(SlotPool { cache, occupants: vec![None; slots.max(1)], steps: Vec::new(), mode, replayed: false })
    }

    /// Rows it holds at most.
    pub fn slots(&self) -> usize {
        self.occupants.len()
    }

    /// Positions per slot.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Bytes of its cache.
    pub fn bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Whether the last step was replayed from a captured graph.
    pub fn last_step_replayed(&self) -> bool {
        self.replayed
    }

    /// Buckets whose graphs have been captured.
    pub fn captured(&self) -> usize {
        self.steps.iter().filter(|(_, _, step)| step.is_captured()).count()
    }

    /// One decode step: `tokens[i]` for `rows[i]`. Returns `[rows, vocab]` logits in the rows'
    /// order.
    pub(crate) fn step(&mut self, model: &PaliGemma, rows: &mut [PooledRow], tokens: &[u32]) -> Result<Tensor> {
        if rows.len() != tokens.len() || rows.is_empty() || rows.len() > self.slots() {
            return Err(Error::Internal(format!("a pooled step of {} rows and {} tokens on {} slots", rows.len(), tokens.len(), self.slots())));
        }
        self.settle(rows)?;
        let m = rows.len();
        let bucket = bucket_for(m).min(self.slots());
        let index = match self.steps.iter().position(|(b, _, _)| *b == bucket) {
            Some(i) => i,
            None => {
                let view = self.cache.first_sequences(bucket)?;
                let step = FixedStep::new(&view, model.config().text.vocab_size, model.dtype(), model.device(), self.mode)?;
                self.steps.push((bucket, view, step));
                self.steps.len() - 1
            }
        };
        let mut padded = vec![0u32; bucket];
        // A spare slot decodes token 0 at position 0 of its own, unused positions: nothing
        // reads them (a row that takes the slot later overwrites what it keeps), and it sees
        // one key, so its softmax stays finite.
        let mut positions = vec![RowPosition { slot: 0, prefix_len: 1, sliding: false }; bucket];
        for (row, &token) in rows.iter().zip(tokens) {
            let slot = row.slot.ok_or_else(|| Error::Internal("a pooled row without a slot".into()))?;
            let occupant = self.occupants[slot].ok_or_else(|| Error::Internal(format!("slot {slot} is empty")))?;
            if occupant.len >= self.capacity() {
                return Err(Error::invalid("maxNewTokens", format!("the sequence needs {} positions but the cache holds {}", occupant.len + 1, self.capacity())));
            }
            padded[slot] = token;
            positions[slot] = RowPosition { slot: occupant.len, prefix_len: occupant.prefix_len, sliding: occupant.sliding };
        }
        let (_, view, step) = &mut self.steps[index];
        let captured_before = step.is_captured();
        let logits = step.step_rows(model.decoder(), view, &padded, &positions)?;
        // The step that captures a graph launches it too.
        self.replayed = captured_before || step.is_captured();
        let order: Vec<u32> = rows.iter().filter_map(|r| r.slot.map(|s| s as u32)).collect();
        for &slot in &order {
            if let Some(occupant) = self.occupants[slot as usize].as_mut() {
                occupant.len += 1;
            }
        }
        Ok(logits.index_select(&Tensor::new(order.as_slice(), logits.device())?, 0)?)
    }

    /// Frees the slots of rows that left, moves the rows behind them down so that the rows
    /// fill slots `0..m` in order, and gives joining rows the next slots.
    fn settle(&mut self, rows: &mut [PooledRow]) -> Result<()> {
        let mut kept = seat_in_order(rows, &self.cache, &self.occupants, &self.cache, self.slots())?;
        let seated = kept.iter().filter(|o| o.is_some()).count();
        for (next, row) in (seated..).zip(rows.iter_mut().filter(|r| r.slot.is_none())) {
            let cache = row.session.take_cache();
            self.cache.copy_sequence(&cache, 0, next, cache.len())?;
            kept[next] = Some(Occupant { len: cache.len(), prefix_len: row.session.prefix_len(), sliding: row.session.sliding_window });
            *row.slot = Some(next);
        }
        self.occupants = kept;
        Ok(())
    }

    /// A pool of `slots` × `positions` holding the seated rows' positions, moved down to slots
    /// `0..` in order; the captured graphs go with the old buffers.
    fn rebuilt(self, model: &PaliGemma, rows: &mut [PooledRow], slots: usize, positions: usize) -> Result<SlotPool> {
        let mut pool = SlotPool::new(model, slots, positions, self.mode)?;
        pool.occupants = seat_in_order(rows, &self.cache, &self.occupants, &pool.cache, slots)?;
        Ok(pool)
    }
}

/// Copies the seated rows' positions, in slot order, from `source` to slots `0..` of `target`
/// (which may be `source`: moving down in ascending order, a slot written belonged to a row
/// that left or has already moved), renumbers the rows, and returns the target's occupants.
fn seat_in_order(rows: &mut [PooledRow], source: &KvCache, occupants: &[Option<Occupant>], target: &KvCache, slots: usize) -> Result<Vec<Option<Occupant>>> {
    let mut seated: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].slot.is_some()).collect();
    seated.sort_by_key(|&i| *rows[i].slot);
    let in_place = std::ptr::eq(source, target);
    let mut kept = vec![None; slots];
    for (next, i) in seated.into_iter().enumerate() {
        let from = rows[i].slot.unwrap_or(next);
        let occupant = occupants.get(from).copied().flatten().ok_or_else(|| Error::Internal(format!("slot {from} is empty")))?;
        if !(in_place && from == next) {
            target.copy_sequence(source, from, next, occupant.len)?;
        }
        *kept.get_mut(next).ok_or_else(|| Error::Internal(format!("{} seated rows on {slots} slots", next + 1)))? = Some(occupant);
        *rows[i].slot = Some(next);
    }
    Ok(kept)
}

/// Bytes of KV cache one slot of `positions` positions holds.
fn slot_bytes(model: &PaliGemma, positions: usize) -> usize {
    super::kv_bytes(model, positions.max(1).div_ceil(CAPACITY_STEP) * CAPACITY_STEP)
}

/// The most rows a pool whose slots hold `positions` may seat within the KV budget: a bucket
/// up to `max_batch`'s, at least 1 (a request larger than the whole budget still runs alone).
pub(super) fn rows_within(model: &PaliGemma, limits: &super::BatchLimits, positions: usize) -> usize {
    let most = limits.kv_cache_bytes / slot_bytes(model, positions).max(1);
    let top = bucket_for(limits.max_batch);
    BUCKETS.iter().copied().chain([top]).filter(|&b| b <= top && b <= most).max().unwrap_or(1)
}

/// The slots and positions of a pool for `rows` rows reaching `longest` positions: a grown
/// pool takes half again its old capacity where the budget still seats the rows, else the
/// exact need.
fn pool_shape(model: &PaliGemma, limits: &super::BatchLimits, rows: usize, longest: usize, old_capacity: Option<usize>) -> (usize, usize) {
    let generous = old_capacity.map_or(longest, |c| longest.max(c + c / 2));
    for positions in [generous, longest] {
        let slots = rows_within(model, limits, positions);
        if slots >= rows {
            return (slots, positions);
        }
    }
    (bucket_for(rows), longest)
}

impl<H: RowHandler> Scheduler<H> {
    /// A step of the running rows in the slot pool: made at the first, re-made when a row
    /// needs more positions or seats than it has, within the KV budget ([`rows_within`]).
    pub(super) fn pooled_step(&mut self, model: &PaliGemma, tokens: &[u32]) -> Result<candle_core::Tensor> {
        let mut rows: Vec<PooledRow> = self
            .running
            .iter_mut()
            .map(|r| PooledRow { slot: &mut r.slot, session: &mut r.session, positions: super::positions(&r.request) })
            .collect();
        let longest = rows.iter().map(|r| r.positions).max().unwrap_or(1);
        if !self.slots.as_ref().is_some_and(|p| p.slots() >= rows.len() && p.capacity() >= longest) {
            let (slots, positions) = pool_shape(model, &self.limits, rows.len(), longest, self.slots.as_ref().map(SlotPool::capacity));
            self.slots = Some(match self.slots.take() {
                Some(old) => old.rebuilt(model, &mut rows, slots, positions)?,
                None => SlotPool::new(model, slots, positions, self.limits.step_mode)?,
            });
        }
        match self.slots.as_mut() {
            Some(pool) => pool.step(model, &mut rows, tokens),
            None => Err(Error::Internal("no slot pool".into())),
        }
    }

    /// The slot pool, where the rows step in one (outside [`StepMode::Eager`]).
    pub fn slot_pool(&self) -> Option<&SlotPool> {
        self.slots.as_ref()
    }
}
