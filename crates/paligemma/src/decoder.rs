//! Gemma and Gemma 2 decoders (spec §2.4, §2.5). The Gemma 2 differences (post-norms,
//! soft-capping, query scale, sliding layers) are configuration of one decoder, not a copy.

use candle_core::{DType, Tensor};

use crate::attention::MaskSpec;
use crate::config::{Architecture, TextConfig};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{Linear, Quantization, RmsNorm};
use crate::rotary::RotaryEmbedding;
use crate::weights::Scope;

mod embedding;
mod layer;

use embedding::TokenEmbedding;

use layer::{maybe_quantize, DecoderLayer, Pass, Rows};

/// Where this forward pass sits in the sequence.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Index of the first new token (= positions already in the cache).
    pub offset: usize,
    /// Tokens `0..prefix_len` attend bidirectionally.
    pub prefix_len: usize,
    /// Whether Gemma 2's sliding window is applied on its sliding layers.
    pub sliding_window: bool,
}

/// Where the new tokens' positions are known, and the cache they are written to.
#[derive(Clone, Copy)]
pub enum Positions<'a> {
    /// On the host: the block starts at the cache's length (prefill, eager decode).
    Host(&'a KvCache),
    /// On the device, one token per sequence: the fixed-shape decode step that a CUDA graph
    /// replays ([`crate::decode_step`]).
    Device(&'a DevicePositions, &'a KvCache),
    /// One token per sequence, each sequence with its own cache, length and masks: the ragged
    /// step of continuous batching ([`Decoder::step_ragged`]).
    Ragged(&'a [RaggedView<'a>]),
}

/// One sequence of a ragged decode step, as the layers see it.
pub struct RaggedView<'a> {
    /// The sequence's own cache (batch 1); its length is the new token's index.
    cache: &'a KvCache,
    /// Additive masks of the new token over the cache, for full and for sliding layers;
    /// `None` where it sees every key (the usual case).
    masks: [Option<Tensor>; 2],
}

/// A sequence taking part in a ragged decode step: its cache (holding its prompt and every
/// token so far, batch 1) and its own attention rule.
pub struct RaggedRow<'a> {
    pub cache: &'a mut KvCache,
    pub prefix_len: usize,
    pub sliding_window: bool,
}

/// The position of a one-token-per-sequence decode step, held on the device.
pub struct DevicePositions {
    /// `[1, head_dim / 2]`: the rotary rows of the position ([`RotaryEmbedding::rows_at`]).
    cos: Tensor,
    sin: Tensor,
    /// `[B, K, 1, H]` u32: the cache slot, repeated for [`KvCache::write_at`].
    kv_index: Tensor,
}

/// Counts how many projections a quantization mode actually converted (a matrix whose input
/// width is not a multiple of the block size stays dense).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuantizationReport {
    pub quantized: usize,
    pub total: usize,
    /// Quantized matrices held once: candle's repacked copy only ([`crate::cpu::repacked`]).
    pub released: usize,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor<'a> {
    /// Every input position (the low-level `forward` API).
    All,
    /// Only the last one (generation: the LM head is 21% of decode bytes, spec §4 of the perf notes).
    Last,
    /// The given positions, in this order (`forward` with chosen positions: the LM head runs
    /// on those rows only, so a long prompt need not produce `[seq, vocab]` logits).
    At(&'a [u32]),
}

pub struct Decoder {
    embed_tokens: TokenEmbedding,
    /// The tied embedding as a projection: the same storage, or a quantized copy in quantized
    /// mode (the dense table is still needed for the lookup).
    lm_head: Linear,
    quantization: QuantizationReport,
    embed_scale: f64,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope: RotaryEmbedding,
    final_softcap: Option<f64>,
    sliding_window: Option<usize>,
    dtype: DType,
}

impl Decoder {
    pub fn load(scope: &Scope, cfg: &TextConfig, arch: Architecture, quant: Option<Quantization>) -> Result<Self> {
        let d = cfg.hidden_size;
        let embed_tokens = TokenEmbedding::load(scope, cfg.vocab_size, d, quant.is_some())?;
        let mut report = QuantizationReport::default();
        let layers = cfg
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &lt)| DecoderLayer::load(&scope.pp("layers").pp(i), cfg, arch, lt, quant, &mut report))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = maybe_quantize(embed_tokens.lm_head(), quant, &mut report)?;
        let norm = RmsNorm::load(&scope.pp("norm"), d, cfg.rms_norm_eps)?;
        // +2: positions are 1-indexed and the last token written may sit at max_positions.
        let rope = RotaryEmbedding::new(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings + 2, scope.dtype(), scope.device())?;
        // √D is cast to the activation dtype before multiplying (spec §2.3, §8 P4): in bf16 it
        // is 45.25 for D = 2048, not 45.2548.
        let embed_scale = round_to_dtype((d as f64).sqrt(), scope.dtype());
        Ok(Decoder {
            embed_tokens,
            lm_head,
            quantization: report,
            embed_scale,
            layers,
            norm,
            rope,
            final_softcap: cfg.final_logit_softcapping,
            sliding_window: cfg.sliding_window,
            dtype: scope.dtype(),
        })
    }

    /// Scaled text embeddings `E[id]·√D` for `ids` (already validated against the vocabulary).
    pub fn embed_text(&self, ids: &[u32]) -> Result<Tensor> {
        self.embed_index(&Tensor::new(ids, self.embed_tokens.device())?)
    }

    /// Scaled embeddings of the ids in `idx` (u32, on the model's device).
    fn embed_index(&self, idx: &Tensor) -> Result<Tensor> {
        Ok((self.embed_tokens.lookup(idx)? * self.embed_scale)?)
    }

    /// Runs `embeds: [B, T, D]` through the layers, appending to `cache`, and returns logits
    /// `[B, T or 1, vocab]`.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache, step: Step, logits_for: LogitsFor<'_>) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let device = embeds.device();
        let base = MaskSpec { offset: step.offset, t, prefix_len: step.prefix_len, window: None };
        let full_mask = base.build(self.dtype, device)?;
        let sliding_mask = match (step.sliding_window, self.sliding_window) {
            (true, Some(w)) => MaskSpec { window: Some(w), ..base }.build(self.dtype, device)?,
            _ => full_mask.clone(),
        };
        let logits = self.run(embeds, Positions::Host(cache), [full_mask.as_ref(), sliding_mask.as_ref()], logits_for)?;
        cache.advance(t);
        Ok(logits)
    }

    /// One decode step for sequences that stand at different positions: `tokens[i]` is the
    /// next token of `rows[i]`. Every row has its own cache, rotary position, prefix length and
    /// masks; the projections, feed-forwards and LM head run once for all rows. Returns
    /// `[B, 1, vocab]` and advances each row's cache by one.
    ///
    /// Each row's arithmetic is that of a batch-1 step on its own cache (the rotation, cache
    /// write, attention and norms run per row; the panel matmul kernel gives each row the
    /// same sums whatever the row count, [`crate::cpu::panels`]), so on the CPU in f32 a row's
    /// logits are bitwise those of the same sequence decoded alone.
    pub fn step_ragged(&self, tokens: &[u32], rows: &mut [RaggedRow<'_>]) -> Result<Tensor> {
        if tokens.len() != rows.len() || rows.is_empty() {
            return Err(crate::error::Error::invalid(
                "batch",
                format!("a ragged step needs one token per row; got {} tokens for {} rows", tokens.len(), rows.len()),
            ));
        }
        let device = self.embed_tokens.device();
        let mut views = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            let len = row.cache.len();
            if len == 0 || len >= row.cache.capacity() {
                return Err(crate::error::Error::invalid(
                    "batch",
                    format!("a row of a ragged step holds {len} of {} positions; it needs a prefill and room for one more", row.cache.capacity()),
                ));
            }
            let base = MaskSpec { offset: len, t: 1, prefix_len: row.prefix_len, window: None };
            let full = base.build(self.dtype, device)?;
            let sliding = match (row.sliding_window, self.sliding_window) {
                (true, Some(w)) => MaskSpec { window: Some(w), ..base }.build(self.dtype, device)?,
                _ => full.clone(),
            };
            views.push(RaggedView { cache: row.cache, masks: [full, sliding] });
        }
        let embeds = self.embed_text(tokens)?.unsqueeze(1)?;
        let logits = self.run(&embeds, Positions::Ragged(&views), [None, None], LogitsFor::Last)?;
        drop(views);
        for row in rows.iter_mut() {
            row.cache.advance(1);
        }
        Ok(logits)
    }

    /// One decode step for `tokens: [B]` with everything that changes from step to step read
    /// from the device: `rope_row: [1]` (the 1-based position id), `kv_index: [B, K, 1, H]` (the
    /// cache slot, repeated; all u32) and the additive masks over the whole cache, `[1,
    /// capacity]` for full and for sliding layers. Shapes and addresses are the same at every
    /// step, so a CUDA graph can replay it. Returns `[B, 1, vocab]`; the caller commits the
    /// cache position.
    pub fn forward_at(&self, tokens: &Tensor, rope_row: &Tensor, kv_index: Tensor, masks: [&Tensor; 2], cache: &KvCache) -> Result<Tensor> {
        let embeds = self.embed_index(tokens)?.unsqueeze(1)?;
        let (cos, sin) = self.rope.rows_at(rope_row)?;
        let at = DevicePositions { cos, sin, kv_index };
        self.run(&embeds, Positions::Device(&at, cache), masks.map(Some), LogitsFor::Last)
    }

    /// The layers, final norm and LM head. `masks`: for full and for sliding layers.
    fn run(&self, embeds: &Tensor, at: Positions, masks: [Option<&Tensor>; 2], logits_for: LogitsFor<'_>) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        // Narrowing the last layer to the last position skips 5 % of the decoder's FLOPs in a
        // prefill (PaliGemma-3B: that layer's o_proj and feed-forward for 265 of 266 positions),
        // which on the CPU is compute-bound. The last position's row then goes through the
        // one-row matmul kernels instead of the batched ones: the same sums in another order,
        // within rounding (checked in f32 by the tests and in bf16 by `scripts/gpu-check.sh`).
        let prune_last = logits_for == LogitsFor::Last && t > 1;
        let last = self.layers.len().saturating_sub(1);
        let pass = Pass { rope: &self.rope, at, masks };
        let mut x = embeds.clone();
        let mut normed = match self.layers.first() {
            Some(first) => first.input_norm.forward(&x)?,
            None => self.norm.forward(&x)?,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let rows = if prune_last && i == last { Rows::Last } else { Rows::All };
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |next| &next.input_norm);
            (x, normed) = layer.forward(&x, &normed, &pass, i, rows, next_norm)?;
        }
        // The last layer's output is already through the final norm, which works row by row.
        let mut h = normed;
        match logits_for {
            LogitsFor::All => {}
            LogitsFor::Last => {
                let t = h.dim(1)?;
                h = h.narrow(1, t - 1, 1)?.contiguous()?;
            }
            LogitsFor::At(rows) => {
                let rows = Tensor::new(rows, h.device())?;
                h = h.index_select(&rows, 1)?.contiguous()?;
            }
        }
        // Kept `[B, rows, D]`: with one row per sequence the LM head is a decode-shaped product
        // (see `Linear::forward`).
        let (b, rows, _) = h.dims3()?;
        let mut logits = self.lm_head.forward(&h)?;
        if let Some(cap) = self.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits.reshape((b, rows, ()))?)
    }

    /// Gemma 2's sliding window, when the config has one.
    pub fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
    }

    /// How many projections quantization converted (all zero when it is off).
    pub fn quantization(&self) -> QuantizationReport {
        self.quantization
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Largest position id the rotary table supports.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions() - 2
    }
}

/// Rounds a scalar the way a tensor of `dtype` would store it.
fn round_to_dtype(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::F32 => x as f32 as f64,
        _ => x,
    }
}
