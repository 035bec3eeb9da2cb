//! Continuous batching: many generations on one model share each decode step.
//!
//! A [`Scheduler`] holds a FIFO of waiting requests and the running rows. At every step boundary
//! ([`Scheduler::step`]) it
//! 1. drops waiting, admitting and running requests whose caller cancelled;
//! 2. admits the first waiting request if the batch has room (`max_batch` rows) and its KV cache
//!    fits the budget beside the running ones. It is prefilled alone and chooses its first
//!    token, then joins the batch. One admission at a time bounds the stall a prefill imposes
//!    on the running rows (admitting a burst of 16 at once would hold the first row for 16
//!    prefills). With `prefill_stage_share`, while rows are running, the prefill itself runs
//!    in stages, one per boundary, each a few layers of the vision tower or the decoder sized
//!    to the waiting requests' fair share of the machine (`Scheduler::stage_budget`), so the
//!    running rows wait for one stage rather than one whole prompt (4–8 s for
//!    PaliGemma-3B-224 on 2 cores). A prompt is one bidirectional block (spec §2.6), so it
//!    cannot be cut by positions, as vLLM's chunked prefill cuts causal prompts; cutting it by
//!    layers gives the same arithmetic. A request that does not fit waits, and so does
//!    everything behind it; one that would not fit even alone runs when nothing else does, so
//!    a budget never turns into a refusal;
//! 3. runs one ragged decode step for every running row ([`PaliGemma::step_rows`]) and hands
//!    each row its next token. Rows that finish (EOS, stop, `max_new_tokens`) leave at once and
//!    stop costing compute.
//!
//! **KV memory: one cache per request, sized exactly.** Each row owns a single-sequence cache of
//! `prompt + max_new_tokens` positions, allocated at admission and freed when the row leaves,
//! like a llama.cpp slot whose size is the request's own. Paging (vLLM) pays off when lengths are
//! unknown and memory is tight on a GPU; here every request states its length up front (the
//! image block dominates the prompt), the CPU attention kernel wants contiguous keys, and the
//! budget admits by the exact byte count, so nothing is gained from pages.
//!
//! **Batch invariance.** A row's arithmetic is that of the same sequence decoded alone (see
//! [`crate::decoder::Decoder::step_ragged`]): on the CPU in f32 its logits and tokens are
//! bitwise the same whatever else shares the batch, at any batch size: the projections' panel
//! kernel gives every output one fixed chain of multiply-adds ([`crate::cpu::panels`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::generate::{choose, Control, GenerateOutput, GenerateRequest, Timings};
use crate::decode_step::StepMode;
use crate::model::{PaliGemma, Session, StagedPrefill};
use crate::sampler::Sampler;

mod row;
pub mod slots;

use row::{begin_row, finish_row, positions};
use slots::SlotPool;

/// What the caller of one batched generation sees: it supplies the request when it is admitted
/// and receives its tokens and its outcome.
pub trait RowHandler {
    /// Called when the request reaches the front of the queue, before its prefill: returns the
    /// request (an `{ image, prompt }` request decodes its image and tokenizes its prompt
    /// here), or the error that ends it.
    fn prepare(&mut self, model: &PaliGemma) -> Result<GenerateRequest>;
    /// A new token (EOS excluded); [`Control::Stop`] ends the generation (stop strings).
    fn on_token(&mut self, id: u32) -> Control;
    /// Polled at every step boundary; a cancelled request leaves with [`Error::Aborted`].
    fn is_cancelled(&self) -> bool;
    /// The outcome, called exactly once.
    fn finish(&mut self, result: Result<GenerateOutput>);
}

/// How many rows may share a step and how much KV memory they may hold together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLimits {
    /// Rows per decode step, at least 1.
    pub max_batch: usize,
    /// Bytes of KV cache the running rows may hold together.
    pub kv_cache_bytes: usize,
    /// While rows are running, an admitted request's prefill runs in stages between their
    /// decode steps, each stage running layers (of the vision tower, then of the decoder) for
    /// this multiple of the waiting requests' fair share of a step (`Scheduler::stage_budget`),
    /// and at least one layer. `None` prefills at once.
    pub prefill_stage_share: Option<f64>,
    /// How the rows' decode steps run when `max_batch` exceeds 1: [`StepMode::Eager`], each row
    /// on its own cache (the CPU's, bitwise batch-invariant); [`StepMode::Graph`], the rows in
    /// one cache of slots with a CUDA graph per batch-size bucket ([`slots`]);
    /// [`StepMode::FixedShapes`], those steps kernel by kernel.
    pub step_mode: StepMode,
}

impl BatchLimits {
    /// Defaults for a device. CPU: 16 rows, where a PaliGemma-3B step has turned compute-bound
    /// (benches/RESULTS.md, "Continuous batching"): more rows add latency, little throughput;
    /// prefills at once, which gives the most throughput (every request soon decodes in one
    /// batch), at the cost of one prefill between two tokens of the running rows; staged
    /// prefills trade that back (`prefill_stage_share`, benches/RESULTS.md). CUDA: 1 row
    /// until the slot pool's bucket graphs ([`slots`]) have run on a GPU; a larger `max_batch`
    /// takes them. Both with a 4 GiB KV budget (PaliGemma-3B: 36 KB a position in f32;
    /// PaliGemma 2 3B: 213 KB).
    pub fn default_for(device: &candle_core::Device) -> BatchLimits {
        BatchLimits {
            max_batch: if device.is_cuda() { 1 } else { CPU_MAX_BATCH },
            kv_cache_bytes: 4 << 30,
            prefill_stage_share: None,
            step_mode: if device.is_cuda() { StepMode::Graph } else { StepMode::Eager },
        }
    }
}

/// The CPU's default `max_batch` (see [`BatchLimits::default_for`]).
pub const CPU_MAX_BATCH: usize = 16;

struct Waiting<H> {
    handler: H,
    queued_at: Instant,
    /// Prepared at an earlier boundary, then found not to fit.
    request: Option<GenerateRequest>,
}

struct Running<H> {
    handler: H,
    session: Session,
    sampler: Sampler,
    request: GenerateRequest,
    history: Vec<u32>,
    token_ids: Vec<u32>,
    /// The config's EOS ids, or none with `ignore_eos`.
    eos: Vec<u32>,
    /// Chosen but not yet fed to the model.
    next: u32,
    kv_bytes: usize,
    timings: Timings,
    decode_started: Instant,
    /// Its slot in the slot pool, once it has stepped there.
    slot: Option<usize>,
    /// Whether a step of the slot pool replayed a CUDA graph for it.
    graph_replayed: bool,
}

/// A request whose prefill runs in stages between the running rows' decode steps.
struct Admitting<H> {
    handler: H,
    request: GenerateRequest,
    session: Session,
    staged: StagedPrefill,
    sampler: Sampler,
    kv_bytes: usize,
    queue_ms: f64,
    started: Instant,
}

/// See the module documentation.
pub struct Scheduler<H: RowHandler> {
    limits: BatchLimits,
    waiting: VecDeque<Waiting<H>>,
    admitting: Option<Box<Admitting<H>>>,
    running: Vec<Running<H>>,
    /// How long the last decode step took: what a prefill stage may take.
    last_step: Duration,
    /// The rows' cache outside [`StepMode::Eager`], made at the first step.
    slots: Option<SlotPool>,
}

impl<H: RowHandler> Scheduler<H> {
    /// An empty scheduler; `max_batch` is raised to 1 if it is 0.
    pub fn new(limits: BatchLimits) -> Self {
        let limits = BatchLimits { max_batch: limits.max_batch.max(1), ..limits };
        Scheduler { limits, waiting: VecDeque::new(), admitting: None, running: Vec::new(), last_step: Duration::ZERO, slots: None }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Queues a request behind the waiting ones.
    pub fn submit(&mut self, handler: H) {
        self.waiting.push_back(Waiting { handler, queued_at: Instant::now(), request: None });
    }

    /// Rows in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a request's prefill is in progress between decode steps.
    pub fn is_admitting(&self) -> bool {
        self.admitting.is_some()
    }

    /// Nothing running, admitting or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.admitting.is_none() && self.waiting.is_empty()
    }

    /// KV bytes the running rows (or their slot pool), and a request being admitted, hold.
    pub fn kv_bytes(&self) -> usize {
        let unseated = self.running.iter().filter(|r| r.slot.is_none()).map(|r| r.kv_bytes).sum::<usize>();
        self.slots.as_ref().map_or(0, SlotPool::bytes) + unseated + self.admitting.as_ref().map_or(0, |a| a.kv_bytes)
    }

    /// Whether the rows step in a slot pool ([`BatchLimits::step_mode`]).
    fn pooled(&self) -> bool {
        self.limits.step_mode != StepMode::Eager && self.limits.max_batch > 1
    }

    /// One step boundary: cancellations, an admission (a whole prefill, or one stage of it
    /// while rows are running), then one decode step of the running batch. Does nothing when
    /// idle.
    pub fn step(&mut self, model: &PaliGemma) {
        self.drop_cancelled();
        self.admit(model);
        self.decode(model);
    }

    /// Ends every request, waiting, admitting or running, with `error()` (a model being
    /// disposed).
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        for mut w in self.waiting.drain(..) {
            w.handler.finish(Err(error()));
        }
        if let Some(mut a) = self.admitting.take() {
            a.handler.finish(Err(error()));
        }
        for mut r in self.running.drain(..) {
            r.handler.finish(Err(error()));
        }
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|w| w.handler.is_cancelled());
        self.waiting = kept.into();
        for mut w in gone {
            w.handler.finish(Err(Error::Aborted));
        }
        if let Some(mut a) = self.admitting.take_if(|a| a.handler.is_cancelled()) {
            a.handler.finish(Err(Error::Aborted));
        }
        let (gone, kept): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|r| r.handler.is_cancelled());
        self.running = kept;
        for mut r in gone {
            r.handler.finish(Err(Error::Aborted));
        }
    }

    /// Advances the admission in progress, or starts the next one; a request that ends during
    /// its prefill (EOS first, an error) makes room for the next at once.
    fn admit(&mut self, model: &PaliGemma) {
        loop {
            let admitting = match self.admitting.take() {
                Some(admitting) => admitting,
                None => match self.next_admission(model) {
                    Some(admitting) => admitting,
                    None => return,
                },
            };
            match finish_row(model, admitting, &mut self.stage_budget()) {
                Ok(Some(row)) => {
                    self.running.push(row);
                    return;
                }
                Ok(None) => continue,
                Err(unfinished) => {
                    self.admitting = Some(unfinished);
                    return;
                }
            }
        }
    }

    /// Whether a stage of the prefill in progress may run another layer: always when no row is
    /// waiting for it, or stages are off. Otherwise the stage gets the waiting requests' share
    /// of the machine, counting each request, running or waiting, once: `(waiting + 1) /
    /// running` of a decode step (times `prefill_stage_share`). So a lone joiner costs the
    /// running rows a small fraction of a step each, and a burst of waiting requests is
    /// admitted nearly at once rather than trickling in while the first rows finish. A layer
    /// starts only if the last one would still have fitted.
    fn stage_budget(&self) -> impl FnMut() -> bool + use<H> {
        let started = Instant::now();
        let budget = match self.limits.prefill_stage_share {
            Some(share) if !self.running.is_empty() => {
                let requests = (self.waiting.len() + 1) as f64 / self.running.len() as f64;
                Some(self.last_step.mul_f64((share * requests).max(0.0)))
            }
            _ => None,
        };
        let mut last_layer_ended = started;
        move || {
            let Some(budget) = budget else { return true };
            let now = Instant::now();
            let layer = now - last_layer_ended;
            last_layer_ended = now;
            now - started + layer <= budget
        }
    }

    /// The first waiting request that fits, begun; `None` when none may start now.
    fn next_admission(&mut self, model: &PaliGemma) -> Option<Box<Admitting<H>>> {
        while self.running.len() < self.limits.max_batch {
            let mut front = self.waiting.pop_front()?;
            let request = match front.request.take() {
                Some(request) => request,
                None => match front.handler.prepare(model) {
                    Ok(request) => request,
                    Err(e) => {
                        front.handler.finish(Err(e));
                        continue;
                    }
                },
            };
            let kv_bytes = kv_bytes(model, positions(&request));
            let fits = if self.pooled() {
                let longest = self.running.iter().map(|r| positions(&r.request)).chain([positions(&request)]).max().unwrap_or(1);
                self.running.len() < slots::rows_within(model, &self.limits, longest)
            } else {
                self.kv_bytes().saturating_add(kv_bytes) <= self.limits.kv_cache_bytes
            };
            if !fits && !self.running.is_empty() {
                // FIFO: it waits at the front, prepared, until enough rows have left.
                front.request = Some(request);
                self.waiting.push_front(front);
                return None;
            }
            let queue_ms = front.queued_at.elapsed().as_secs_f64() * 1e3;
            if let Some(admitting) = begin_row(model, front.handler, request, kv_bytes, queue_ms, self.limits.max_batch > 1) {
                return Some(admitting);
            }
        }
        None
    }

    fn decode(&mut self, model: &PaliGemma) {
        if self.running.is_empty() {
            return;
        }
        let rows = self.running.len();
        let started = Instant::now();
        let tokens: Vec<u32> = self.running.iter().map(|r| r.next).collect();
        // With `max_batch` 1 a request steps alone on its own session, in the device's mode
        // (on CUDA replaying the graph it keeps for later requests of its shape).
        let stepped = if self.pooled() {
            self.pooled_step(model, &tokens)
        } else {
            match self.running.as_mut_slice() {
                // A row alone steps as `generate` does; on the CPU that is the same arithmetic as
                // a ragged step of one row.
                [only] => model.step(&mut only.session, only.next).and_then(|l| Ok(l.unsqueeze(0)?)),
                running => {
                    let mut sessions: Vec<&mut Session> = running.iter_mut().map(|r| &mut r.session).collect();
                    model.step_rows(&mut sessions, &tokens)
                }
            }
        };
        self.last_step = started.elapsed();
        let logits = match stepped {
            Ok(logits) => logits,
            Err(e) => {
                // A failed step leaves every cache in doubt: the whole batch ends with it.
                self.slots = None;
                let message = e.to_string();
                let code = e.code();
                for mut row in self.running.drain(..) {
                    row.handler.finish(Err(same_kind(code, &message)));
                }
                return;
            }
        };
        let replayed = self.slots.as_ref().is_some_and(SlotPool::last_step_replayed);
        // The rows' choices in parallel (each scans 257 152 logits; one thread left the other idle).
        let mut choosers: Vec<(&mut Sampler, &[u32])> = self.running.iter_mut().map(|r| (&mut r.sampler, r.history.as_slice())).collect();
        let chosen: Vec<Result<u32>> = choosers.par_iter_mut().enumerate().map(|(i, (sampler, history))| choose(&logits.get(i)?, sampler, history)).collect();
        let mut kept = Vec::with_capacity(rows);
        for (mut row, chosen) in self.running.drain(..).zip(chosen) {
            row.timings.batch_size = row.timings.batch_size.max(rows);
            row.graph_replayed |= replayed;
            match chosen {
                Ok(id) => match row.accept(id) {
                    Some(reason) => row.end(reason),
                    None => kept.push(row),
                },
                Err(e) => row.handler.finish(Err(e)),
            }
        }
        self.running = kept;
    }
}

/// Bytes of a single-sequence KV cache of `positions` positions.
pub fn kv_bytes(model: &PaliGemma, positions: usize) -> usize {
    let t = &model.config().text;
    let per_position = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * model.dtype().size_in_bytes();
    per_position.saturating_mul(positions)
}

/// An error of the same code as one that ended a whole step, for each of its rows.
fn same_kind(code: crate::error::ErrorCode, message: &str) -> Error {
    match code {
        crate::error::ErrorCode::InvalidArgument => Error::invalid("batch", message),
        crate::error::ErrorCode::Aborted => Error::Aborted,
        _ => Error::Internal(message.to_string()),
    }
}
