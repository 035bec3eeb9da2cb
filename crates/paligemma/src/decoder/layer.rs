//! One decoder layer and its blocks: self-attention with the rotary embedding and the KV
//! cache write, the GeGLU feed-forward, and the norms around them (Gemma 2's post-norms
//! included, spec §2.5).

use candle_core::Tensor;
use rayon::prelude::*;

use super::{Positions, QuantizationReport, RaggedView};
use crate::attention::{attend, AttentionSpec};
use crate::config::{Architecture, LayerType, TextConfig};
use crate::cpu::repacked::Outcome;
use crate::cuda::RopeStore;
use crate::error::Result;
use crate::cpu::int8_panels::Int8Panels;
use crate::layers::{add_then_norm, geglu, quantized_from_blocks, quantized_from_panels, stacked_name, KeepBlocks, Layout, Linear, Projection, Quantization, RmsNorm};
use crate::rotary::RotaryEmbedding;
use crate::weights::{Recorded, Scope};

/// `linear` in the quantization mode, if one is set, counted in `report` (the LM head too).
/// When the load is recorded for a prepared folder, the matrix is recorded as `name`: its int8
/// panels under [`panels_name`], or candle's blocks.
pub(super) fn maybe_quantize(linear: Linear, q: Option<Quantization>, report: &mut QuantizationReport, record: (&Scope, &str)) -> Result<Linear> {
    let Some(q) = q else { return Ok(linear) };
    let (scope, name) = record;
    // A CPU without VNNI quantizes into candle's blocks; the folder gets int8 panels all the
    // same (where the shape fits), so it is the same folder whichever CPU prepared it.
    let keep = |bytes: &[u8], rows: usize, cols: usize| -> Result<()> {
        if q == Quantization::Q8_0 && Int8Panels::fits(rows, cols) {
            let panels = std::sync::Arc::new(Int8Panels::from_q8_0(bytes, rows, cols)?);
            scope.record(&panels_name(name), || Recorded::Int8Panels(panels));
        } else {
            scope.record(name, || Recorded::Blocks(std::sync::Arc::new(bytes.to_vec())));
        }
        Ok(())
    };
    let keep: KeepBlocks = Some(&keep);
    if linear.in_dim().is_some_and(|k| k % q.block_size() == 0) {
        scope.report_phase(crate::weights::LoadPhase::Quantizing);
    }
    let (linear, outcome) = linear.quantized(q, keep.filter(|_| scope.is_recording()))?;
    if let Some(panels) = linear.int8_panels() {
        scope.record(&panels_name(name), || Recorded::Int8Panels(panels.clone()));
    }
    count(report, outcome);
    Ok(linear)
}

/// Where a prepared folder stores the int8 panels of the `q8_0` matrix whose blocks would be
/// named `blocks_name` (`….q8_0` → `….q8_0-panels`).
pub(super) fn panels_name(blocks_name: &str) -> String {
    format!("{blocks_name}-panels")
}

fn count(report: &mut QuantizationReport, outcome: Option<Outcome>) {
    report.total += 1;
    report.quantized += usize::from(outcome.is_some());
    report.released += usize::from(outcome == Some(Outcome::Released));
    report.int8_panels += usize::from(outcome == Some(Outcome::Int8Panels));
}

/// A stored quantized matrix named `name` (a prepared folder's) of `rows × cols`, if there is
/// one, counted in `report`: `q8_0` int8 panels (format 2) or candle's blocks (format 1, and
/// `q4k`).
pub(super) fn prepared_quantized(scope: &Scope, name: &str, q: Option<Quantization>, rows: usize, cols: usize, report: &mut QuantizationReport) -> Result<Option<Linear>> {
    let Some(q) = q else { return Ok(None) };
    let panels = match q {
        Quantization::Q8_0 if Int8Panels::fits(rows, cols) => scope.mapped_u8(&panels_name(name), Int8Panels::stored_len(rows, cols))?,
        _ => None,
    };
    let stored = match panels {
        Some(mapped) => Some(quantized_from_panels(mapped, rows, cols)?),
        None => scope.with_stored_bytes(name, |bytes| quantized_from_blocks(bytes, q, rows, cols))?,
    };
    let Some((matrix, outcome)) = stored else { return Ok(None) };
    count(report, Some(outcome));
    Ok(Some(Linear::from_quantized(matrix, rows)))
}

/// Stacked projections (no bias), quantized in the quantization mode: from a prepared folder's
/// blocks when it has them, else from the dense weights, which a recorded load then drops in
/// favour of the blocks.
fn load_projection(parts: &[Projection], in_dim: usize, layout: Layout, q: Option<Quantization>, report: &mut QuantizationReport) -> Result<Linear> {
    let (Some(q), Some(first)) = (q, parts.first()) else { return Linear::load_stacked(parts, in_dim, false, layout) };
    let name = stacked_name(parts, q.as_str());
    let out_dim = parts.iter().map(Projection::out_dim).sum();
    if let Some(linear) = prepared_quantized(first.scope(), &name, Some(q), out_dim, in_dim, report)? {
        return Ok(linear);
    }
    let linear = maybe_quantize(Linear::load_stacked(parts, in_dim, false, layout)?, Some(q), report, (first.scope(), &name))?;
    if linear.is_quantized() {
        for p in parts {
            p.scope().record(&format!("{}.weight", p.scope().prefix()), || Recorded::Dropped);
        }
    }
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
            qkv: load_projection(&qkv, d, layout, quant, report)?,
            o_proj: load_projection(&o_proj, n * h, layout, quant, report)?,
            heads: n,
            kv_heads: k,
            head_dim: h,
            spec,
        })
    }

    /// `rows`: [`Rows::Last`] writes keys and values for every position but attends only from
    /// the last one, and returns `[B, 1, D]`.
    /// `kind`: which of the pass's masks applies, 0 for full layers and 1 for sliding ones.
    fn forward(&self, x: &Tensor, pass: &Pass, layer: usize, kind: usize, rows: Rows) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let Pass { rope, at, masks } = *pass;
        let (n, k, h) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        // Queries and keys are rotated together, as `n + k` heads: one kernel where two rotations
        // and two gathers would run (at batch 1 the q|k block is already contiguous).
        let qk = qkv.narrow(2, 0, (n + k) * h)?.reshape((b, t, n + k, h))?.transpose(1, 2)?;
        let vn = qkv.narrow(2, (n + k) * h, k * h)?.reshape((b, t, k, h))?.transpose(1, 2)?;
        let (qk, (keys, values)) = match at {
            Positions::Ragged(views) => {
                // Each row exactly as a batch-1 step on its own cache would run it.
                let row = |(r, view): (usize, &RaggedView)| -> Result<Tensor> {
                    let cache = view.cache;
                    let qk = rope.apply(&qk.narrow(0, r, 1)?, cache.len() + 1)?;
                    let (keys, values) = cache.write(layer, &qk.narrow(1, n, k)?, &vn.narrow(0, r, 1)?)?;
                    attend(&qk.narrow(1, 0, n)?, &keys, &values, view.masks[kind].as_ref(), &self.spec)
                };
                // On the CPU the rows run in parallel: each is a chain of small ops on its own
                // cache, which one thread runs far below the machine's speed (the same ops, so
                // the same bits). A GPU stream takes them in order.
                let outs = if qk.device().is_cpu() {
                    views.par_iter().enumerate().map(row).collect::<Result<Vec<_>>>()?
                } else {
                    views.iter().enumerate().map(row).collect::<Result<Vec<_>>>()?
                };
                return self.o_proj.forward(&Tensor::cat(&outs, 0)?);
            }
            Positions::Host(cache) => {
                // transformers numbers positions from 1 (spec §2.7, §8 P1); matching it keeps
                // the rounding of cos/sin identical to the reference.
                let qk = rope.apply(&qk, cache.len() + 1)?;
                let kv = cache.write(layer, &qk.narrow(1, n, k)?, &vn)?;
                (qk, kv)
            }
            Positions::Device(p, cache) => {
                let (k_all, v_all) = cache.buffers(layer);
                let fused = RopeStore { qkv: &qkv, heads: (n, k), cos: &p.cos, sin: &p.sin, slot: &p.slots, k_cache: k_all, v_cache: v_all };
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
        let mut mask = masks[kind].cloned();
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
            gate_up: load_projection(&gate_up, d, layout, quant, report)?,
            down: load_projection(&down, f, layout, quant, report)?,
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

pub(super) struct DecoderLayer {
    pub(super) input_norm: RmsNorm,
    attention: SelfAttention,
    /// The norm before the feed-forward: `post_attention_layernorm` in Gemma (the name
    /// misleads, spec §8 P10), `pre_feedforward_layernorm` in Gemma 2.
    ffw_norm: RmsNorm,
    post_norms: Option<PostNorms>,
    mlp: FeedForward,
    layer_type: LayerType,
}

impl DecoderLayer {
    pub(super) fn load(
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
    pub(super) fn forward(&self, x: &Tensor, normed: &Tensor, pass: &Pass, layer: usize, rows: Rows, next_norm: &RmsNorm) -> Result<(Tensor, Tensor)> {
        let kind = match self.layer_type {
            LayerType::Full => 0,
            LayerType::Sliding => 1,
        };
        let a = self.attention.forward(normed, pass, layer, kind, rows)?;
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

/// What every layer of one pass shares: the rotary table, where the new tokens sit and the
/// cache they go to, and the attention masks (for full and for sliding layers; a ragged step
/// carries its own per row).
#[derive(Clone, Copy)]
pub(super) struct Pass<'a> {
    pub(super) rope: &'a RotaryEmbedding,
    pub(super) at: Positions<'a>,
    pub(super) masks: [Option<&'a Tensor>; 2],
}

/// Which positions a decoder layer carries past its key/value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    All,
    /// Only the last: in the last layer of a prefill that wants one position's logits, the other
    /// positions' attention outputs and feed-forward feed nothing (their keys and values, which
    /// later steps read, are written either way).
    Last,
}
