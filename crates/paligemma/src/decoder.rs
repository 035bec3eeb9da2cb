//! Gemma and Gemma 2 decoders (spec §2.4, §2.5). The Gemma 2 differences (post-norms,
//! soft-capping, query scale, sliding layers) are configuration of one decoder, not a copy.

use candle_core::{DType, Tensor};

use crate::attention::{attend, AttentionSpec, MaskSpec};
use crate::config::{Architecture, LayerType, TextConfig};
use crate::cuda::RopeStore;
use crate::error::Result;
use crate::kv_cache::KvCache;

use crate::layers::{add_then_norm, geglu, Layout, Linear, Projection, Quantization, RmsNorm};
use crate::rotary::RotaryEmbedding;
use crate::weights::Scope;

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

/// Where the new tokens' positions are known.
#[derive(Clone, Copy)]
pub enum Positions<'a> {
    /// On the host: the block starts at the cache's length (prefill, eager decode).
    Host,
    /// On the device, one token per sequence: the fixed-shape decode step that a CUDA graph
    /// replays ([`crate::decode_step`]).
    Device(&'a DevicePositions),
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
}

fn maybe_quantize(linear: Linear, q: Option<Quantization>, report: &mut QuantizationReport) -> Result<Linear> {
    let Some(q) = q else { return Ok(linear) };
    report.total += 1;
    let (linear, done) = linear.quantized(q)?;
    report.quantized += usize::from(done);
    Ok(linear)
}

struct SelfAttention {
    qkv: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    spec: AttentionSpec,
}

impl SelfAttention {
    fn load(scope: &Scope, cfg: &TextConfig, quant: Option<Quantization>, report: &mut QuantizationReport) -> Result<Self> {
        let (d, n, k, h) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let spec = AttentionSpec { scale: cfg.attention_scale, softcap: cfg.attn_logit_softcapping };
        let layout = Layout::for_scope(scope, quant.is_none());
        let qkv = [
            Projection::new(scope.pp("q_proj"), n * h).scaled(spec.query_factor()),
            Projection::new(scope.pp("k_proj"), k * h),
            Projection::new(scope.pp("v_proj"), k * h),
        ];
        let o_proj = [Projection::new(scope.pp("o_proj"), d)];
        Ok(SelfAttention {
            qkv: maybe_quantize(Linear::load_stacked(&qkv, d, false, layout)?, quant, report)?,
            o_proj: maybe_quantize(Linear::load_stacked(&o_proj, n * h, false, layout)?, quant, report)?,
            heads: n,
            kv_heads: k,
            head_dim: h,
            spec,
        })
    }

    /// `rows`: [`Rows::Last`] writes keys and values for every position but attends only from
    /// the last one, and returns `[B, 1, D]`.
    fn forward(&self, x: &Tensor, pass: &Pass, layer: usize, mask: Option<&Tensor>, rows: Rows) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let Pass { rope, cache, at, .. } = *pass;
        let (n, k, h) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        // Queries and keys are rotated together, as `n + k` heads: one kernel where two rotations
        // and two gathers would run (at batch 1 the q|k block is already contiguous).
        let qk = qkv.narrow(2, 0, (n + k) * h)?.reshape((b, t, n + k, h))?.transpose(1, 2)?;
        let vn = qkv.narrow(2, (n + k) * h, k * h)?.reshape((b, t, k, h))?.transpose(1, 2)?;
        let (qk, (keys, values)) = match at {
            Positions::Host => {
                // transformers numbers positions from 1 (spec §2.7, §8 P1); matching it keeps
                // the rounding of cos/sin identical to the reference.
                let qk = rope.apply(&qk, cache.len() + 1)?;
                let kv = cache.write(layer, &qk.narrow(1, n, k)?, &vn)?;
                (qk, kv)
            }
            Positions::Device(p) => {
                let (k_all, v_all) = cache.buffers(layer);
                let fused = RopeStore { qkv: &qkv, heads: (n, k), cos: &p.cos, sin: &p.sin, slot: &p.kv_index, k_cache: k_all, v_cache: v_all };
                match crate::cuda::rope_and_store(&fused)? {
                    // The query heads only; `q` below takes them all.
                    Some(q) => (q, (k_all.clone(), v_all.clone())),
                    None => {
                        let qk = RotaryEmbedding::apply_rows(&qk, &p.cos, &p.sin)?;
                        let kv = cache.write_at(layer, &qk.narrow(1, n, k)?, &vn, &p.kv_index)?;
                        (qk, kv)
                    }
                }
            }
        };
        let mut q = qk.narrow(1, 0, n)?;
        let mut mask = mask.cloned();
        if rows == Rows::Last {
            q = q.narrow(2, t - 1, 1)?;
            mask = mask.map(|m| m.narrow(0, t - 1, 1)).transpose()?;
        }
        let out = attend(&q, &keys, &values, mask.as_ref(), &self.spec)?;
        self.o_proj.forward(&out)
    }
}

/// GeGLU feed-forward: `down(gelu_tanh(gate(x)) ⊙ up(x))`, gate and up fused into one matmul.
struct FeedForward {
    gate_up: Linear,
    down: Linear,
    hidden: usize,
}

impl FeedForward {
    fn load(scope: &Scope, cfg: &TextConfig, quant: Option<Quantization>, report: &mut QuantizationReport) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let layout = Layout::for_scope(scope, quant.is_none());
        let gate_up = [Projection::new(scope.pp("gate_proj"), f), Projection::new(scope.pp("up_proj"), f)];
        let down = [Projection::new(scope.pp("down_proj"), d)];
        Ok(FeedForward {
            gate_up: maybe_quantize(Linear::load_stacked(&gate_up, d, false, layout)?, quant, report)?,
            down: maybe_quantize(Linear::load_stacked(&down, f, false, layout)?, quant, report)?,
            hidden: f,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&geglu(&self.gate_up.forward(x)?, self.hidden)?)
    }
}

/// Gemma 2's norms on the attention and feed-forward outputs, before each residual add
/// (spec §2.5); Gemma has neither.
struct PostNorms {
    attention: RmsNorm,
    feedforward: RmsNorm,
}

struct DecoderLayer {
    input_norm: RmsNorm,
    attention: SelfAttention,
    /// The norm before the feed-forward: `post_attention_layernorm` in Gemma (the name
    /// misleads, spec §8 P10), `pre_feedforward_layernorm` in Gemma 2.
    ffw_norm: RmsNorm,
    post_norms: Option<PostNorms>,
    mlp: FeedForward,
    layer_type: LayerType,
}

impl DecoderLayer {
    fn load(
        scope: &Scope,
        cfg: &TextConfig,
        arch: Architecture,
        layer_type: LayerType,
        quant: Option<Quantization>,
        report: &mut QuantizationReport,
    ) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let norm = |name: &str| RmsNorm::load(&scope.pp(name), d, eps);
        let (ffw_norm, post_norms) = match arch {
            Architecture::PaliGemma => (norm("post_attention_layernorm")?, None),
            Architecture::PaliGemma2 => (
                norm("pre_feedforward_layernorm")?,
                Some(PostNorms { attention: norm("post_attention_layernorm")?, feedforward: norm("post_feedforward_layernorm")? }),
            ),
        };
        Ok(DecoderLayer {
            input_norm: norm("input_layernorm")?,
            attention: SelfAttention::load(&scope.pp("self_attn"), cfg, quant, report)?,
            ffw_norm,
            post_norms,
            mlp: FeedForward::load(&scope.pp("mlp"), cfg, quant, report)?,
            layer_type,
        })
    }

    /// `x: [B, T, D]`, the residual stream, and `normed`, this layer's input norm of it. Returns
    /// the next residual stream and `next_norm` of it (the next layer's input norm, or the final
    /// norm): each residual add is fused with the norm that reads it. With [`Rows::Last`] both
    /// are `[B, 1, D]`, the last position.
    fn forward(&self, x: &Tensor, normed: &Tensor, pass: &Pass, layer: usize, rows: Rows, next_norm: &RmsNorm) -> Result<(Tensor, Tensor)> {
        let mask = match self.layer_type {
            LayerType::Full => pass.masks[0],
            LayerType::Sliding => pass.masks[1],
        };
        let a = self.attention.forward(normed, pass, layer, mask, rows)?;
        let x = match rows {
            Rows::All => x.clone(),
            Rows::Last => x.narrow(1, x.dim(1)? - 1, 1)?,
        };
        let post = self.post_norms.as_ref();
        let (h, ffw_in) = add_then_norm(&x, &a, post.map(|p| &p.attention), &self.ffw_norm)?;
        let m = self.mlp.forward(&ffw_in)?;
        add_then_norm(&h, &m, post.map(|p| &p.feedforward), next_norm)
    }
}

/// What every layer of one pass shares: the rotary table, the cache it writes, where the new
/// tokens sit and the attention masks (for full and for sliding layers).
#[derive(Clone, Copy)]
struct Pass<'a> {
    rope: &'a RotaryEmbedding,
    cache: &'a KvCache,
    at: Positions<'a>,
    masks: [Option<&'a Tensor>; 2],
}

/// Which positions a decoder layer carries past its key/value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    /// Only the last: in the last layer of a prefill that wants one position's logits, the other
    /// positions' attention outputs and feed-forward feed nothing (their keys and values, which
    /// later steps read, are written either way).
    Last,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every input position (the low-level `forward` API).
    All,
    /// Only the last one (generation: the LM head is 21% of decode bytes, spec §4 of the perf notes).
    Last,
}

pub struct Decoder {
    embed_tokens: Tensor,
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
        let embed_tokens = scope.pp("embed_tokens").get(&[cfg.vocab_size, d], "weight")?;
        let mut report = QuantizationReport::default();
        let layers = cfg
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &lt)| DecoderLayer::load(&scope.pp("layers").pp(i), cfg, arch, lt, quant, &mut report))
            .collect::<Result<Vec<_>>>()?;
        let tied = Linear::from_parts(embed_tokens.clone(), None);
        let lm_head = match quant {
            Some(q) => {
                report.total += 1;
                let (head, quantized) = tied.quantized(q)?;
                report.quantized += usize::from(quantized);
                head
            }
            None => tied,
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
        Ok((self.embed_tokens.index_select(idx, 0)? * self.embed_scale)?)
    }

    /// Runs `embeds: [B, T, D]` through the layers, appending to `cache`, and returns logits
    /// `[B, T or 1, vocab]`.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache, step: Step, logits_for: LogitsFor) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let device = embeds.device();
        let base = MaskSpec { offset: step.offset, t, prefix_len: step.prefix_len, window: None };
        let full_mask = base.build(self.dtype, device)?;
        let sliding_mask = match (step.sliding_window, self.sliding_window) {
            (true, Some(w)) => MaskSpec { window: Some(w), ..base }.build(self.dtype, device)?,
            _ => full_mask.clone(),
        };
        let logits = self.run(embeds, cache, Positions::Host, [full_mask.as_ref(), sliding_mask.as_ref()], logits_for)?;
        cache.advance(t);
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
        self.run(&embeds, cache, Positions::Device(&at), masks.map(Some), LogitsFor::Last)
    }

    /// The layers, final norm and LM head. `masks`: for full and for sliding layers.
    fn run(&self, embeds: &Tensor, cache: &KvCache, at: Positions, masks: [Option<&Tensor>; 2], logits_for: LogitsFor) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        // Narrowing the last layer to the last position skips 5 % of the decoder's FLOPs in a
        // prefill (PaliGemma-3B: that layer's o_proj and feed-forward for 265 of 266 positions),
        // which on the CPU is compute-bound. The last position's row then goes through the
        // one-row matmul kernels instead of the batched ones: the same sums in another order,
        // within rounding (checked in f32 by the tests and in bf16 by `scripts/gpu-check.sh`).
        let prune_last = logits_for == LogitsFor::Last && t > 1;
        let last = self.layers.len().saturating_sub(1);
        let pass = Pass { rope: &self.rope, cache, at, masks };
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
        if logits_for == LogitsFor::Last {
            let t = h.dim(1)?;
            h = h.narrow(1, t - 1, 1)?.contiguous()?;
        }
        let (b, rows, d) = h.dims3()?;
        let h = h.reshape((b * rows, d))?;
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
