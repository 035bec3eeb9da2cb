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

use layer::{maybe_quantize, prepared_quantized, DecoderLayer, Pass, Rows};

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
    /// `[B, 1, head_dim / 2]`: every sequence's rotary row ([`RotaryEmbedding::rows_at`]).
    cos: Tensor,
    sin: Tensor,
    /// `[B]` u32: every sequence's cache slot.
    slots: Tensor,
    /// `[B, K, 1, H]` u32: the slots, repeated for [`KvCache::write_at`].
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
    /// Quantized matrices on our VNNI kernels (`q8_0`: [`crate::cpu::int8_panels`], `q4k`:
    /// [`crate::cpu::int4_panels`]), held once too.
    pub int8_panels: usize,
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

/// The hidden state between layers: the residual stream, its norm for the next layer, and
/// which layer that is.
struct Hidden {
    x: Tensor,
    normed: Tensor,
    next_layer: usize,
}

/// A prefill in progress ([`Decoder::begin_prefill`]).
pub struct Prefill {
    hidden: Hidden,
    masks: [Option<Tensor>; 2],
    t: usize,
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
        // The LM head is the tied table, quantized in the quantization mode; a prepared folder
        // stores that matrix (int8 panels or blocks) beside the table, which lookups still read
        // (mapped in place then).
        let head_name = format!("{}.{}", scope.pp("embed_tokens").prefix(), quant.map_or("", |q| q.as_str()));
        let head_stored = scope.has_tensor(&head_name) || scope.has_tensor(&layer::panels_name(&head_name));
        let embed_tokens = TokenEmbedding::load(scope, cfg.vocab_size, d, quant.is_some(), head_stored)?;
        let mut report = QuantizationReport::default();
        let layers = cfg
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &lt)| DecoderLayer::load(&scope.pp("layers").pp(i), cfg, arch, lt, quant, &mut report))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match prepared_quantized(scope, &head_name, quant, cfg.vocab_size, d, &mut report)? {
            Some(head) => head,
            None => maybe_quantize(embed_tokens.lm_head()?, quant, &mut report, (scope, &head_name))?,
        };
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
        let mut prefill = self.begin_prefill(embeds, step)?;
        self.prefill_layers(&mut prefill, cache, usize::MAX, logits_for)?;
        self.finish_prefill(prefill, cache, logits_for)
    }

    /// Starts a block of `embeds: [B, T, D]` that [`prefill_layers`](Self::prefill_layers) takes
    /// through the layers a few at a time and [`finish_prefill`](Self::finish_prefill) ends: a
    /// continuous batch takes its decode steps in between ([`crate::batching`]), so a prompt's
    /// prefill stalls the running rows a few layers at a time rather than all at once. The
    /// arithmetic is that of [`forward`](Self::forward), which is these three calls.
    pub fn begin_prefill(&self, embeds: &Tensor, step: Step) -> Result<Prefill> {
        let (_, t, _) = embeds.dims3()?;
        let device = embeds.device();
        let base = MaskSpec { offset: step.offset, t, prefix_len: step.prefix_len, window: None };
        let full = base.build(self.dtype, device)?;
        let sliding = match (step.sliding_window, self.sliding_window) {
            (true, Some(w)) => MaskSpec { window: Some(w), ..base }.build(self.dtype, device)?,
            _ => full.clone(),
        };
        Ok(Prefill { hidden: self.hidden_start(embeds)?, masks: [full, sliding], t })
    }

    /// Runs up to `layers` more layers of `prefill`; true when none is left.
    pub fn prefill_layers(&self, prefill: &mut Prefill, cache: &KvCache, layers: usize, logits_for: LogitsFor<'_>) -> Result<bool> {
        let pass = Pass { rope: &self.rope, at: Positions::Host(cache), masks: [prefill.masks[0].as_ref(), prefill.masks[1].as_ref()] };
        let prune_last = logits_for == LogitsFor::Last && prefill.t > 1;
        self.run_layers(&mut prefill.hidden, &pass, layers, prune_last)?;
        Ok(prefill.hidden.next_layer == self.layers.len())
    }

    /// The logits of a prefill whose layers have all run; commits its positions to `cache`.
    pub fn finish_prefill(&self, prefill: Prefill, cache: &mut KvCache, logits_for: LogitsFor<'_>) -> Result<Tensor> {
        if prefill.hidden.next_layer != self.layers.len() {
            return Err(crate::error::Error::Internal(format!("a prefill finished after {} of {} layers", prefill.hidden.next_layer, self.layers.len())));
        }
        let logits = self.head(prefill.hidden.normed, logits_for)?;
        cache.advance(prefill.t);
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
    /// from the device, per sequence: `rope_rows: [B]` (the 1-based position ids), `slots: [B]`
    /// (the cache slots; all u32) and the additive masks over the whole cache, `[B, 1,
    /// capacity]` for full and for sliding layers. Shapes and addresses are the same at every
    /// step, so a CUDA graph can replay it; the sequences may stand at different positions (a
    /// ragged step, [`crate::batching::slots::SlotPool`]). Returns `[B, 1, vocab]`; the caller
    /// commits the positions.
    pub fn forward_at(&self, tokens: &Tensor, rope_rows: &Tensor, slots: &Tensor, masks: [&Tensor; 2], cache: &KvCache) -> Result<Tensor> {
        let embeds = self.embed_index(tokens)?.unsqueeze(1)?;
        let (cos, sin) = self.rope.rows_at(rope_rows)?;
        let [b, k, _, h] = cache.slot_shape();
        let kv_index = slots.reshape((b, 1, 1, 1))?.broadcast_as((b, k, 1, h))?.contiguous()?;
        let at = DevicePositions { cos, sin, slots: slots.clone(), kv_index };
        self.run(&embeds, Positions::Device(&at, cache), masks.map(Some), LogitsFor::Last)
    }

    /// The layers, final norm and LM head. `masks`: for full and for sliding layers.
    fn run(&self, embeds: &Tensor, at: Positions, masks: [Option<&Tensor>; 2], logits_for: LogitsFor<'_>) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let mut hidden = self.hidden_start(embeds)?;
        let pass = Pass { rope: &self.rope, at, masks };
        self.run_layers(&mut hidden, &pass, usize::MAX, logits_for == LogitsFor::Last && t > 1)?;
        self.head(hidden.normed, logits_for)
    }

    /// The hidden state before the first layer: the embeddings and their first norm.
    fn hidden_start(&self, embeds: &Tensor) -> Result<Hidden> {
        let normed = match self.layers.first() {
            Some(first) => first.input_norm.forward(embeds)?,
            None => self.norm.forward(embeds)?,
        };
        Ok(Hidden { x: embeds.clone(), normed, next_layer: 0 })
    }

    /// Runs up to `count` layers from `hidden.next_layer` on. `prune_last`: the last layer runs
    /// for the last position only.
    fn run_layers(&self, hidden: &mut Hidden, pass: &Pass, count: usize, prune_last: bool) -> Result<()> {
        // Narrowing the last layer to the last position skips 5 % of the decoder's FLOPs in a
        // prefill (PaliGemma-3B: that layer's o_proj and feed-forward for 265 of 266 positions),
        // which on the CPU is compute-bound.
        let last = self.layers.len().saturating_sub(1);
        let end = hidden.next_layer.saturating_add(count).min(self.layers.len());
        for i in hidden.next_layer..end {
            let rows = if prune_last && i == last { Rows::Last } else { Rows::All };
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |next| &next.input_norm);
            let (x, normed) = self.layers[i].forward(&hidden.x, &hidden.normed, pass, i, rows, next_norm)?;
            *hidden = Hidden { x, normed, next_layer: i + 1 };
        }
        Ok(())
    }

    /// Logits from the last layer's output, which is already through the final norm (it works
    /// row by row).
    fn head(&self, normed: Tensor, logits_for: LogitsFor<'_>) -> Result<Tensor> {
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
