//! PaliGemma = SigLIP vision tower + linear projector + Gemma/Gemma 2 decoder (spec §2.1).
//!
//! The model is immutable after loading and every method takes `&self`; per-request state (the
//! KV cache and position) lives in a [`Session`] owned by the caller.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::decoder::{Decoder, LogitsFor, RaggedRow, Step};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::decoder::QuantizationReport;
use crate::device_memory::PoolRetention;
use crate::decode_step::{FixedStep, StepMode, StepPool, CAPACITY_STEP};
use crate::layers::{Linear, Quantization};
use crate::vision::VisionTower;
use crate::weights::{LoadMonitor, Scope, Weights};

mod inputs;
mod prefill;

pub use inputs::MAX_PIXEL_MAGNITUDE;
pub use prefill::StagedPrefill;

/// How to load a model.
pub struct LoadOptions<'a> {
    pub device: Device,
    /// Compute dtype. On the CPU, bf16 means f32 activations over bf16 matrices
    /// ([`crate::cpu::bf16_panels`]), on CPUs with AVX512-BF16; elsewhere it runs as f32.
    pub dtype: DType,
    pub monitor: LoadMonitor<'a>,
    /// Apply Gemma 2's `final_logit_softcapping` from the config. Off by default: the
    /// reference (`PaliGemmaForConditionalGeneration` in transformers 5.x) applies its LM head
    /// without it, and big_vision's transfer recipe sets it to 0. The cap is monotonic, so
    /// greedy output is the same either way; only sampled output and raw logits differ.
    pub final_logit_softcap: bool,
    /// Quantize the decoder's matmuls and LM head (CPU, f32 activations). The vision tower and
    /// the projector stay in `dtype`.
    pub quantization: Option<Quantization>,
    /// The vision tower's matrices in bf16 on the CPU (`Some(true)`), or in f32 (`Some(false)`);
    /// `None`: bf16 with the bf16 dtype, else f32. With `q8_0` the first token comes about 10 %
    /// sooner, for a small loss (docs/guarantees.md); CPUs without AVX512-BF16 run f32.
    pub vision_bf16: Option<bool>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            monitor: LoadMonitor { on_progress: None, is_cancelled: None },
            final_logit_softcap: false,
            quantization: None,
            vision_bf16: None,
        }
    }
}

/// Per-request inference state: the KV cache and how much of the sequence it holds.
pub struct Session {
    cache: KvCache,
    prefix_len: usize,
    batch: usize,
    /// Apply Gemma 2's sliding window on its sliding layers (off by default, spec §2.5).
    pub sliding_window: bool,
    /// How decode steps run: [`StepMode::default_for`] the model's device unless changed before
    /// the first step.
    pub step_mode: StepMode,
    fixed: Option<FixedStep>,
    /// Where the cache and its captured step go when the session ends.
    pool: Option<StepPool>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let (Some(pool), Some(fixed)) = (self.pool.take(), self.fixed.take()) {
            pool.give(std::mem::take(&mut self.cache), fixed);
        }
    }
}

impl Session {
    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.cache.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    /// Sequences decoded together.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Whether decode steps are being replayed from a captured CUDA graph.
    pub fn graph_captured(&self) -> bool {
        self.fixed.as_ref().is_some_and(FixedStep::is_captured)
    }
    /// Why capturing the decode step as a CUDA graph failed, if it did; decoding then goes on
    /// kernel by kernel, with the same results.
    pub fn graph_error(&self) -> Option<&str> {
        self.fixed.as_ref().and_then(FixedStep::capture_error)
    }
    /// Tokens `0..prefix_len` form the bidirectional prefix block.
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix_len
    }
    /// Hands its cache over (a batch's slot pool copies it into a slot); the session keeps
    /// an empty one.
    pub(crate) fn take_cache(&mut self) -> KvCache {
        std::mem::take(&mut self.cache)
    }
}

pub struct PaliGemma {
    config: Config,
    vision: VisionTower,
    projector: Linear,
    decoder: Decoder,
    device: Device,
    dtype: DType,
    /// Dense matrices in bf16 on the CPU (the `bf16` dtype there), activations in f32.
    bf16_matrices: bool,
    quantization: Option<Quantization>,
    steps: StepPool,
    /// Last, so that it drops after every tensor above and can hand their memory back.
    _pool_retention: PoolRetention,
}

impl PaliGemma {
    /// Loads `config.json` and the safetensors weights of a Hugging Face-layout folder, or of a
    /// prepared folder ([`crate::prepared`]).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        crate::prepared::check(dir, options)?;
        let config = Config::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        Self::from_weights(config, &weights, options)
    }

    /// Builds the model from an already parsed config and opened weights.
    pub fn from_weights(config: Config, weights: &Weights, options: &LoadOptions) -> Result<Self> {
        if !matches!(options.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid("dtype", format!("{:?} is not a supported compute dtype", options.dtype)));
        }
        // candle has no fast CPU bf16 ops: on the CPU bf16 is our bf16 matrix kernel with
        // everything else in f32, and plain f32 on a CPU without AVX512-BF16.
        let bf16_matrices = options.device.is_cpu() && options.dtype == DType::BF16;
        let dtype = if bf16_matrices { DType::F32 } else { options.dtype };
        if bf16_matrices && options.quantization.is_some() {
            return Err(Error::invalid("dtype", "bf16 and a quantization are two different dtypes; choose one"));
        }
        let root = Scope::new(weights, dtype, &options.device, &options.monitor).with_bf16_matrices(bf16_matrices);
        let vision_bf16 = match options.vision_bf16 {
            None => bf16_matrices,
            Some(true) if !options.device.is_cpu() || dtype != DType::F32 => {
                return Err(Error::invalid("visionDtype", "a bf16 vision tower is a CPU mode, beside f32, bf16, q8_0 or q4k; on a GPU the tower runs in the model's dtype"));
            }
            Some(on) => on,
        };
        let vision = VisionTower::load(&root.pp("vision_tower").with_bf16_matrices(vision_bf16), &config.vision)?;
        let projector = Linear::load(
            &root.pp("multi_modal_projector.linear"),
            config.vision.hidden_size,
            config.text.hidden_size,
            true,
        )?;
        let mut text = config.text.clone();
        if !options.final_logit_softcap {
            text.final_logit_softcapping = None;
        }
        if options.quantization.is_some() && (dtype != DType::F32 || !options.device.is_cpu()) {
            return Err(Error::invalid("dtype", "quantized decoding (q8_0, q4k) runs on the CPU with f32 activations"));
        }
        let decoder = Decoder::load(&root.pp("language_model"), &text, config.architecture, options.quantization)?;
        Ok(PaliGemma {
            config,
            vision,
            projector,
            decoder,
            device: options.device.clone(),
            dtype,
            bf16_matrices,
            quantization: options.quantization,
            steps: StepPool::default(),
            _pool_retention: PoolRetention::new(&options.device),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub(crate) fn decoder(&self) -> &Decoder {
        &self.decoder
    }
    /// The precision the model was asked for, as `dtype` options spell it (`f32`, `bf16`,
    /// `q8_0`, …): on the CPU `bf16` computes in f32 over bf16 matrices, so [`Self::dtype`]
    /// says `F32` there.
    pub fn precision_name(&self) -> &'static str {
        match self.quantization {
            Some(q) => q.as_str(),
            None if self.bf16_matrices => "bf16",
            None => crate::device::dtype_name(self.dtype),
        }
    }
    /// The quantization the decoder was loaded with, if any.
    pub fn quantization_mode(&self) -> Option<Quantization> {
        self.quantization
    }

    /// How many decoder projections are quantized, out of how many (zeros when off).
    pub fn quantization(&self) -> QuantizationReport {
        self.decoder.quantization()
    }

    /// The vision tower's `last_hidden_state`, `[B, P, D_vision]`.
    pub fn vision_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// Projected image embeddings `[B, P, D]`; they enter the decoder unscaled (spec §2.3).
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.projector.forward(&self.vision.forward(pixels)?)
    }

    /// Text embeddings with image rows replaced, in order, by `image_features: [P, D]`
    /// (spec §2.3). Returns `[T, D]`.
    fn embed(&self, input_ids: &[u32], image_features: &Tensor) -> Result<Tensor> {
        let image_id = self.config.image_token_id;
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut image_row = 0;
        while start < input_ids.len() {
            let is_image = input_ids[start] == image_id;
            let end = input_ids[start..].iter().position(|&id| (id == image_id) != is_image).map_or(input_ids.len(), |n| start + n);
            if is_image {
                pieces.push(image_features.narrow(0, image_row, end - start)?);
                image_row += end - start;
            } else {
                pieces.push(self.decoder.embed_text(&input_ids[start..end])?);
            }
            start = end;
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }

    /// Embeds a batch of equally long prompts, `[B, T, D]`.
    fn embed_batch(&self, prompts: &[&[u32]], pixels: &Tensor) -> Result<Tensor> {
        self.embed_with_features(prompts, &self.image_features(pixels)?)
    }

    /// Embeds a batch of equally long prompts with their projected image features, `[B, T, D]`.
    fn embed_with_features(&self, prompts: &[&[u32]], features: &Tensor) -> Result<Tensor> {
        let rows = prompts
            .iter()
            .enumerate()
            .map(|(b, ids)| self.embed(ids, &features.get(b)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Logits for every position of a prompt, `[T, vocab]` as f32 (the whole prompt attends
    /// bidirectionally, as in the reference's prefill).
    pub fn forward(&self, input_ids: &[u32], pixel_values: &[f32]) -> Result<Tensor> {
        self.forward_at(input_ids, pixel_values, None)
    }

    /// [`forward`](Self::forward) with logits for the chosen `positions` only (in that order,
    /// repeats allowed), `[positions.len(), vocab]`; `None` means every position.
    pub fn forward_at(&self, input_ids: &[u32], pixel_values: &[f32], positions: Option<&[u32]>) -> Result<Tensor> {
        self.check_input_ids(input_ids)?;
        if let Some(positions) = positions {
            if positions.is_empty() {
                return Err(Error::invalid("positions", "must name at least one position"));
            }
            if let Some(&p) = positions.iter().find(|&&p| p as usize >= input_ids.len()) {
                return Err(Error::invalid(
                    "positions",
                    format!("position {p} is past the prompt's {} positions", input_ids.len()),
                ));
            }
        }
        let pixels = self.pixel_tensor(pixel_values)?;
        let mut session = self.new_session(input_ids.len())?;
        let embeds = self.embed_batch(&[input_ids], &pixels)?;
        let step = Step { offset: 0, prefix_len: input_ids.len(), sliding_window: session.sliding_window };
        let logits_for = positions.map_or(LogitsFor::All, LogitsFor::At);
        let logits = self.decoder.forward(&embeds, &mut session.cache, step, logits_for)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// A fresh single-sequence session able to hold `capacity` tokens.
    pub fn new_session(&self, capacity: usize) -> Result<Session> {
        self.new_batch_session(1, capacity)
    }

    /// A fresh session for `batch` sequences decoded in lockstep.
    pub fn new_batch_session(&self, batch: usize, capacity: usize) -> Result<Session> {
        self.new_session_with(batch, capacity, StepMode::default_for(&self.device))
    }

    /// A session whose decode steps run in `mode`. Outside [`StepMode::Eager`] the capacity is
    /// rounded up to a multiple of [`CAPACITY_STEP`], and the cache (with its captured step) is
    /// taken from an earlier session of the same batch, capacity and mode when one has ended.
    pub fn new_session_with(&self, batch: usize, capacity: usize, mode: StepMode) -> Result<Session> {
        let t = &self.config.text;
        let max = self.decoder.max_positions();
        if capacity > max {
            return Err(Error::invalid("maxNewTokens", format!("prompt plus new tokens need {capacity} positions; the model supports {max}")));
        }
        if batch == 0 {
            return Err(Error::invalid("batch", "must hold at least one sequence"));
        }
        let session = |cache, fixed, pool| Session { cache, prefix_len: 0, batch, sliding_window: false, step_mode: mode, fixed, pool };
        if mode == StepMode::Eager {
            let cache = KvCache::new(self.decoder.num_layers(), batch, t.num_key_value_heads, t.head_dim, capacity, self.dtype, &self.device)?;
            return Ok(session(cache, None, None));
        }
        let capacity = capacity.div_ceil(CAPACITY_STEP).saturating_mul(CAPACITY_STEP).min(max);
        let pool = Some(self.steps.clone());
        if let Some((cache, fixed)) = self.steps.take(batch, capacity, mode)? {
            return Ok(session(cache, Some(fixed), pool));
        }
        let cache = KvCache::new(self.decoder.num_layers(), batch, t.num_key_value_heads, t.head_dim, capacity, self.dtype, &self.device)?;
        Ok(session(cache, None, pool))
    }

    /// How many ended sessions' decode steps (and caches) are kept for reuse.
    pub fn pooled_decode_steps(&self) -> usize {
        self.steps.len()
    }

    /// A single-sequence session for a batch's row. With `ragged`, its decode steps can join
    /// ragged batches ([`step_rows`](Self::step_rows)) and it is eager, since a captured step is
    /// bound to one batch shape; without, it steps alone in the device's default mode (CUDA
    /// graphs on a GPU).
    pub fn new_row_session(&self, capacity: usize, sliding_window: bool, ragged: bool) -> Result<Session> {
        let mode = if ragged { StepMode::Eager } else { StepMode::default_for(&self.device) };
        let mut session = self.new_session_with(1, capacity, mode)?;
        session.sliding_window = sliding_window;
        Ok(session)
    }

    /// One decode step for independent prefilled sequences at different positions:
    /// `tokens[i]` goes to `sessions[i]` (each of batch 1, from
    /// [`new_row_session`](Self::new_row_session)). Returns `[B, vocab]`; see
    /// [`crate::decoder::Decoder::step_ragged`] for why each row's logits are those of the same
    /// sequence stepped alone.
    pub fn step_rows(&self, sessions: &mut [&mut Session], tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.text.vocab_size) {
            return Err(Error::invalid("token", format!("{bad} is outside the vocabulary")));
        }
        if sessions.iter().any(|s| s.batch != 1 || s.step_mode != StepMode::Eager) {
            return Err(Error::invalid("session", "ragged steps take eager single-sequence sessions (new_row_session)"));
        }
        let mut rows: Vec<RaggedRow> = sessions
            .iter_mut()
            .map(|s| RaggedRow { cache: &mut s.cache, prefix_len: s.prefix_len, sliding_window: s.sliding_window })
            .collect();
        Ok(self.decoder.step_ragged(tokens, &mut rows)?.squeeze(1)?)
    }

    /// Feeds one generated token and returns the next distribution's logits, `[vocab]`.
    pub fn step(&self, session: &mut Session, token: u32) -> Result<Tensor> {
        Ok(self.step_batch(session, &[token])?.squeeze(0)?)
    }

    /// Feeds one token per sequence; returns `[B, vocab]`.
    pub fn step_batch(&self, session: &mut Session, tokens: &[u32]) -> Result<Tensor> {
        if tokens.len() != session.batch {
            return Err(Error::invalid("batch", format!("session holds {} sequences; got {} tokens", session.batch, tokens.len())));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.text.vocab_size) {
            return Err(Error::invalid("token", format!("{bad} is outside the vocabulary")));
        }
        if session.is_empty() {
            return Err(Error::invalid("session", "a decode step needs a prefilled session"));
        }
        if session.step_mode != StepMode::Eager {
            if session.fixed.is_none() {
                let fixed = FixedStep::new(&session.cache, self.config.text.vocab_size, self.dtype, &self.device, session.step_mode)?;
                session.fixed = Some(fixed);
            }
            if let Some(fixed) = session.fixed.as_mut() {
                return fixed.step(&self.decoder, &mut session.cache, tokens, session.prefix_len, session.sliding_window);
            }
        }
        let embeds = self.decoder.embed_text(tokens)?.unsqueeze(1)?;
        let step = Step { offset: session.len(), prefix_len: session.prefix_len, sliding_window: session.sliding_window };
        let logits = self.decoder.forward(&embeds, &mut session.cache, step, LogitsFor::Last)?;
        Ok(logits.squeeze(1)?)
    }
}
