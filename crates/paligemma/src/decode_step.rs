//! The decode step at fixed shapes, replayed as a CUDA graph.
//!
//! An eager decode step launches about twenty kernels per layer, and on a GPU candle's host-side
//! cost per launch, not the weight traffic, bounds batch-1 decode (`benches/RESULTS.md`). Here
//! every step runs the same kernels on the same buffers: the token ids, the position and the
//! masks are first copied into device buffers, the rotary row and the cache slot are read from
//! there, and attention spans the whole cache with the unwritten slots masked out. Nothing in
//! the step depends on a host value, so on CUDA it is captured once as a graph and then replayed
//! with a single launch per token.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::attention::MaskSpec;
use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;

/// How a session runs its decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// Shapes follow the sequence length; kernels are launched one by one (the CPU default:
    /// there a launch costs nothing and attention reads only the written slots).
    Eager,
    /// The graph-safe step, launched kernel by kernel: for tests on the CPU, and to time the
    /// graph against it.
    FixedShapes,
    /// [`StepMode::FixedShapes`], captured as a CUDA graph at its second step and replayed from
    /// then on (the CUDA default). Falls back to `FixedShapes` where capture fails.
    Graph,
}

impl StepMode {
    /// `Graph` on CUDA and `Eager` elsewhere. `PALIGEMMA_STEP_MODE=eager|fixed|graph` overrides
    /// it (for A/B timing; `graph` means `fixed` off CUDA).
    pub fn default_for(device: &Device) -> StepMode {
        match std::env::var("PALIGEMMA_STEP_MODE").as_deref() {
            Ok("eager") => StepMode::Eager,
            Ok("fixed") => StepMode::FixedShapes,
            Ok("graph") => StepMode::Graph,
            _ if device.is_cuda() => StepMode::Graph,
            _ => StepMode::Eager,
        }
    }
}

enum GraphState {
    /// No step has run yet: the first one runs kernel by kernel, which loads every kernel
    /// module and lets cuBLAS settle before anything is captured.
    Warming,
    Ready,
    #[cfg(feature = "cuda")]
    Captured(cuda::Graph),
    /// Capture failed or is not wanted: run kernel by kernel.
    Off,
}

/// Where one sequence of a fixed-shape step stands: the cache slot its token is written to
/// (the positions before it are its own), its prefix block, and whether its sliding layers
/// keep their window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowPosition {
    pub(crate) slot: usize,
    pub(crate) prefix_len: usize,
    pub(crate) sliding: bool,
}

/// The device buffers of one fixed-shape decode step: a session's, or one batch-size bucket
/// of a [`crate::batching::slots::SlotPool`].
pub(crate) struct FixedStep {
    /// `[3B]` u32: the tokens, then every sequence's cache slot, then its rotary row.
    inputs: Tensor,
    /// `[2, B, 1, capacity]` additive masks over the whole cache, one per sequence: full
    /// layers, then sliding layers.
    masks: Tensor,
    /// `[B, vocab]`: where a captured graph leaves its logits.
    #[cfg(feature = "cuda")]
    logits: Tensor,
    batch: usize,
    /// The mode it was made for (a pooled step only serves sessions of the same mode).
    mode: StepMode,
    graph: GraphState,
    /// Why capture failed, when it did.
    capture_error: Option<String>,
}

impl FixedStep {
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(crate) fn new(cache: &KvCache, vocab: usize, dtype: DType, device: &Device, mode: StepMode) -> Result<Self> {
        let batch = cache.slot_shape()[0];
        Ok(FixedStep {
            inputs: Tensor::zeros(3 * batch, DType::U32, device)?,
            masks: Tensor::zeros((2, batch, 1, cache.capacity()), dtype, device)?,
            #[cfg(feature = "cuda")]
            logits: Tensor::zeros((batch, vocab), dtype, device)?,
            batch,
            mode,
            graph: if mode == StepMode::Graph && device.is_cuda() { GraphState::Warming } else { GraphState::Off },
            capture_error: None,
        })
    }

    /// Whether steps are being replayed from a captured graph.
    pub(crate) fn is_captured(&self) -> bool {
        #[cfg(feature = "cuda")]
        if let GraphState::Captured(_) = self.graph {
            return true;
        }
        false
    }

    /// Why the graph capture failed, if it did (the steps then run kernel by kernel).
    pub(crate) fn capture_error(&self) -> Option<&str> {
        self.capture_error.as_deref()
    }

    /// Decodes `tokens` (one per sequence) at the cache's next slot and returns `[B, vocab]`
    /// logits; the cache length is committed.
    pub(crate) fn step(&mut self, decoder: &Decoder, cache: &mut KvCache, tokens: &[u32], prefix_len: usize, sliding: bool) -> Result<Tensor> {
        let slot = cache.len();
        if slot >= cache.capacity() {
            return Err(Error::invalid("maxNewTokens", format!("the sequence needs {} positions but the cache holds {}", slot + 1, cache.capacity())));
        }
        let logits = self.step_rows(decoder, cache, tokens, &vec![RowPosition { slot, prefix_len, sliding }; tokens.len()])?;
        cache.advance(1);
        Ok(logits)
    }

    /// Decodes `tokens[i]` at `rows[i]` (each sequence at its own slot) and returns `[B,
    /// vocab]` logits. The cache's length is the caller's to keep: here it only bounds the
    /// slots.
    pub(crate) fn step_rows(&mut self, decoder: &Decoder, cache: &KvCache, tokens: &[u32], rows: &[RowPosition]) -> Result<Tensor> {
        if tokens.len() != self.batch || rows.len() != self.batch {
            return Err(Error::Internal(format!("a fixed step of {} sequences got {} tokens and {} positions", self.batch, tokens.len(), rows.len())));
        }
        if let Some(full) = rows.iter().find(|r| r.slot >= cache.capacity()) {
            return Err(Error::invalid("maxNewTokens", format!("the sequence needs {} positions but the cache holds {}", full.slot + 1, cache.capacity())));
        }
        // candle uploads the shapes and strides of non-contiguous operands on every launch; a
        // graph would replay those copies from host buffers long freed. With this cache on,
        // they are uploaded once (in the warm-up step) and the graph reads the device copies.
        #[cfg(feature = "cuda")]
        let _parameters_cached = cuda::cache_kernel_parameters(self.inputs.device());
        let mut inputs = tokens.to_vec();
        inputs.extend(rows.iter().map(|r| r.slot as u32));
        // The rotary row is the 1-based position id (spec §2.7, §8 P1).
        inputs.extend(rows.iter().map(|r| r.slot as u32 + 1));
        upload::u32s(&self.inputs, &inputs)?;
        let window = decoder.sliding_window();
        let masks: Vec<f32> = [false, true]
            .iter()
            .flat_map(|&sliding_layers| {
                rows.iter().flat_map(move |r| mask_row(r.slot, r.prefix_len, if sliding_layers && r.sliding { window } else { None }, cache.capacity()))
            })
            .collect();
        upload::floats(&self.masks, &masks)?;
        let logits = match &self.graph {
            GraphState::Off | GraphState::Warming => {
                if let GraphState::Warming = self.graph {
                    self.graph = GraphState::Ready;
                }
                self.run(decoder, cache)?.squeeze(1)?
            }
            #[cfg(feature = "cuda")]
            GraphState::Captured(graph) => {
                graph.launch()?;
                self.logits.copy()?
            }
            GraphState::Ready => self.capture_and_launch(decoder, cache)?,
        };
        Ok(logits)
    }

    /// The step itself: `[B, 1, vocab]` logits from the device buffers.
    fn run(&self, decoder: &Decoder, cache: &KvCache) -> Result<Tensor> {
        let b = self.batch;
        let tokens = self.inputs.narrow(0, 0, b)?;
        let slots = self.inputs.narrow(0, b, b)?;
        let rope_rows = self.inputs.narrow(0, 2 * b, b)?;
        let (full, sliding) = (self.masks.get(0)?, self.masks.get(1)?);
        decoder.forward_at(&tokens, &rope_rows, &slots, [&full, &sliding], cache)
    }

    #[cfg(feature = "cuda")]
    fn capture_and_launch(&mut self, decoder: &Decoder, cache: &KvCache) -> Result<Tensor> {
        let captured = cuda::capture(self.inputs.device(), || {
            let logits = self.run(decoder, cache)?;
            Ok(self.logits.slice_set(&logits.squeeze(1)?, 0, 0)?)
        });
        match captured {
            Ok(graph) => {
                graph.launch()?;
                self.graph = GraphState::Captured(graph);
                Ok(self.logits.copy()?)
            }
            Err(e) => {
                // The step is correct without the graph, only slower; the session reports why
                // (`Session::graph_error`).
                self.graph = GraphState::Off;
                self.capture_error = Some(e.to_string());
                Ok(self.run(decoder, cache)?.squeeze(1)?)
            }
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn capture_and_launch(&mut self, decoder: &Decoder, cache: &KvCache) -> Result<Tensor> {
        self.graph = GraphState::Off;
        Ok(self.run(decoder, cache)?.squeeze(1)?)
    }
}

/// Sessions on CUDA round their cache capacity up to a multiple of this, so that requests of
/// similar length share one captured step (attention over a few more masked slots costs far
/// less than a capture).
pub const CAPACITY_STEP: usize = 64;

/// How many steps a model keeps for reuse, and how many bytes of KV cache they may hold in all
/// (PaliGemma 2 at 448 px, batch 8, holds 0.9 GB per cache).
const POOL_SIZE: usize = 4;
const POOL_BYTES: usize = 2 << 30;

/// Fixed-shape decode steps, with the KV caches their graphs are bound to, kept by the model
/// when their sessions end. A capture costs about three decode steps (10–15 ms for PaliGemma 2
/// on an H100), so a request whose batch, capacity and mode match an earlier one takes its
/// graph instead.
#[derive(Default, Clone)]
pub(crate) struct StepPool(Arc<Mutex<Vec<(KvCache, FixedStep)>>>);

impl StepPool {
    /// A step for `batch` sequences, exactly `capacity` positions and `mode`, with its cache
    /// emptied.
    pub(crate) fn take(&self, batch: usize, capacity: usize, mode: StepMode) -> Result<Option<(KvCache, FixedStep)>> {
        let found = {
            let mut pool = self.0.lock().map_err(|_| Error::Internal("decode step pool poisoned".into()))?;
            let index = pool.iter().position(|(cache, fixed)| cache.capacity() == capacity && fixed.batch == batch && fixed.mode == mode);
            index.map(|i| pool.swap_remove(i))
        };
        match found {
            Some((mut cache, fixed)) => {
                cache.reset()?;
                Ok(Some((cache, fixed)))
            }
            None => Ok(None),
        }
    }

    /// Keeps a step for a later request; the oldest go when the pool is over its count or size.
    pub(crate) fn give(&self, cache: KvCache, fixed: FixedStep) {
        if cache.bytes() > POOL_BYTES {
            return;
        }
        if let Ok(mut pool) = self.0.lock() {
            pool.push((cache, fixed));
            while pool.len() > POOL_SIZE || pool.iter().map(|(c, _)| c.bytes()).sum::<usize>() > POOL_BYTES {
                pool.remove(0);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().map_or(0, |pool| pool.len())
    }
}

/// The additive mask of a query at `slot` over a cache of `capacity` (`window`: a sliding
/// layer's), `0` where a key may be seen and `-∞` where not (later slots are not written yet,
/// or hold another sequence's leftovers).
fn mask_row(slot: usize, prefix_len: usize, window: Option<usize>, capacity: usize) -> impl Iterator<Item = f32> {
    let spec = MaskSpec { offset: slot, t: 1, prefix_len, window };
    (0..capacity).map(move |j| if j <= slot && spec.allowed(slot, j) { 0.0 } else { f32::NEG_INFINITY })
}

/// Host → device copies into existing buffers, outside any graph.
mod upload {
    use candle_core::Tensor;

    use crate::error::Result;

    pub(super) fn u32s(dst: &Tensor, values: &[u32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if dst.device().is_cuda() {
            return super::cuda::memcpy_into(dst, values);
        }
        Ok(dst.slice_set(&Tensor::from_slice(values, values.len(), dst.device())?, 0, 0)?)
    }

    /// `values` in f32, stored in `dst`'s dtype.
    pub(super) fn floats(dst: &Tensor, values: &[f32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if dst.device().is_cuda() {
            use half::{bf16, f16};
            return match dst.dtype() {
                candle_core::DType::BF16 => super::cuda::memcpy_into(dst, &values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()),
                candle_core::DType::F16 => super::cuda::memcpy_into(dst, &values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()),
                _ => super::cuda::memcpy_into(dst, values),
            };
        }
        let host = Tensor::from_slice(values, dst.shape(), &candle_core::Device::Cpu)?.to_dtype(dst.dtype())?;
        Ok(dst.slice_set(&host.to_device(dst.device())?, 0, 0)?)
    }
}

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hide_unwritten_slots_and_honour_the_window() {
        let full: Vec<f32> = mask_row(5, 3, None, 8).collect();
        let sliding: Vec<f32> = mask_row(5, 3, Some(2), 8).collect();
        let seen = |row: &[f32]| row.iter().map(|&v| v == 0.0).collect::<Vec<_>>();
        assert_eq!(seen(&full), [true, true, true, true, true, true, false, false]);
        assert_eq!(seen(&sliding), [false, false, false, false, true, true, false, false]);
        assert!(full[6].is_infinite() && full[6] < 0.0);
    }

    #[test]
    fn the_pool_keeps_the_newest_steps_and_matches_batch_capacity_and_mode() -> Result<()> {
        let pool = StepPool::default();
        let entry = |capacity: usize, mode: StepMode| -> Result<(KvCache, FixedStep)> {
            let cache = KvCache::new(2, 1, 1, 4, capacity, DType::F32, &Device::Cpu)?;
            let fixed = FixedStep::new(&cache, 10, DType::F32, &Device::Cpu, mode)?;
            Ok((cache, fixed))
        };
        for capacity in [64, 128, 192, 256, 320] {
            let (cache, fixed) = entry(capacity, StepMode::FixedShapes)?;
            pool.give(cache, fixed);
        }
        assert_eq!(pool.len(), POOL_SIZE);
        assert!(pool.take(1, 64, StepMode::FixedShapes)?.is_none(), "the oldest went first");
        assert!(pool.take(2, 128, StepMode::FixedShapes)?.is_none(), "batch must match");
        assert!(pool.take(1, 128, StepMode::Graph)?.is_none(), "mode must match");
        let (cache, _) = pool.take(1, 128, StepMode::FixedShapes)?.expect("a matching step");
        assert_eq!((cache.capacity(), cache.len()), (128, 0));
        assert_eq!(pool.len(), POOL_SIZE - 1);
        Ok(())
    }
}
