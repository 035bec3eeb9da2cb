//! Small building blocks shared by the vision tower and the decoder.

use candle_core::{DType, Module, Tensor};

use crate::cpu;
use crate::error::{Error, Result};
use crate::weights::Scope;

mod activation;
mod norm;
mod quantization;

pub use activation::{geglu, gelu_tanh, softmax_last_dim};
pub use norm::{add_then_norm, LayerNorm, RmsNorm};
pub use quantization::{quantize_matrix, quantized_from_blocks, quantized_from_panels, KeepBlocks, Quantization, QuantizedMatrix};

#[derive(Debug, Clone)]
enum Weight {
    /// `[out, in]`.
    Dense(Tensor),
    /// Panel-major `[in, out]` (see [`Layout::Panels`]), with its input width.
    Panels(cpu::panels::PanelBuffer, usize),
    /// bf16 panels ([`Layout::Bf16Panels`]).
    Bf16(std::sync::Arc<cpu::bf16_panels::Bf16Panels>),
    Quantized(QuantizedMatrix),
}

/// How a dense projection keeps its matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`, as checkpoints store it: on the GPU, in half precision, and for matrices that
    /// are about to be quantized.
    OutIn,
    /// Panel-major `[in, out]` for f32 on the CPU ([`cpu::panels`]): packed once at load the
    /// way a GEMM packs its right operand, so the prompt's products pack nothing (gemm packed
    /// an `[out, in]` weight with a scalar gather, 21 % of the prefill's samples), and a decode
    /// step of 1 to 16 rows keeps its outputs in registers while the weights stream.
    Panels,
    /// The same panels in bf16, multiplied with f32 sums by AVX512-BF16 ([`cpu::bf16_panels`]):
    /// `dtype: 'bf16'` on a CPU that has it.
    Bf16Panels,
}

impl Layout {
    /// For weights on the CPU in f32 that stay dense: [`Layout::Bf16Panels`] where the scope
    /// asks for bf16 matrices and the CPU multiplies bf16, else [`Layout::Panels`]; otherwise
    /// [`Layout::OutIn`].
    /// A load recorded for a prepared folder keeps f32 panels: the folder stores those, and
    /// the bf16 panels are made from them at load ([`cpu::bf16_panels::Bf16Panels::from_f32_panels`]).
    pub fn for_scope(scope: &Scope, stays_dense: bool) -> Layout {
        if !stays_dense || !scope.device().is_cpu() || scope.dtype() != DType::F32 {
            Layout::OutIn
        } else if scope.bf16_matrices() && cpu::bf16_panels::available() && !scope.is_recording() {
            Layout::Bf16Panels
        } else {
            Layout::Panels
        }
    }
}

/// The panel-major `[in_dim, out_dim]` matrix `name`: mapped in place from a prepared folder
/// (factors already folded in, [`crate::prepared`]), or packed by `fill` from the checkpoint;
/// recorded either way when the load is recorded.
pub fn panel_matrix(scope: &Scope, name: &str, in_dim: usize, out_dim: usize, fill: impl FnOnce(&mut cpu::huge_pages::PanelStack) -> Result<()>) -> Result<cpu::panels::PanelBuffer> {
    let matrix = match scope.mapped_f32(name, &[cpu::panels::packed_len(in_dim, out_dim)])? {
        Some(mapped) => cpu::panels::PanelBuffer::Mapped(mapped),
        None => {
            let mut stack = cpu::huge_pages::PanelStack::new(in_dim, out_dim);
            fill(&mut stack)?;
            cpu::panels::PanelBuffer::Owned(std::sync::Arc::new(stack.finish()?))
        }
    };
    scope.record(name, || crate::weights::Recorded::Panels(matrix.clone()));
    Ok(matrix)
}

/// The bf16 panels of stacked projections: from a prepared folder's f32 panels when it has
/// them (the same values either way), else from the checkpoint.
fn bf16_matrix(parts: &[Projection], in_dim: usize, out_dim: usize) -> Result<cpu::bf16_panels::Bf16Panels> {
    let Some(first) = parts.first() else { return Err(Error::Internal("a projection of no parts".into())) };
    if let Some(mapped) = first.scope.mapped_f32(&stacked_name(parts, "panels"), &[cpu::panels::packed_len(in_dim, out_dim)])? {
        return cpu::bf16_panels::Bf16Panels::from_f32_panels(mapped.as_slice(), in_dim, out_dim);
    }
    let mut stack = cpu::bf16_panels::Bf16Stack::new(in_dim, out_dim);
    for p in parts {
        p.scope.with_raw(&[p.out_dim, in_dim], "weight", |raw| stack.push(raw.bytes, raw.dtype, p.out_dim, p.factor as f32))?;
    }
    stack.finish()
}

/// The name of a stacked projection's matrix in a prepared folder ([`crate::prepared`]): the
/// parts' common parent, their own names joined by `+`, then `.{kind}`
/// (`language_model.layers.0.self_attn.q_proj+k_proj+v_proj.panels`, `….q8_0`).
pub fn stacked_name(parts: &[Projection], kind: &str) -> String {
    let split = |p: &Projection| -> (String, String) {
        let prefix = p.scope.prefix();
        match prefix.rsplit_once('.') {
            Some((parent, leaf)) => (parent.to_string(), leaf.to_string()),
            None => (String::new(), prefix.to_string()),
        }
    };
    let names: Vec<(String, String)> = parts.iter().map(split).collect();
    let parent = names.first().map(|(p, _)| p.clone()).unwrap_or_default();
    let joined = if names.iter().all(|(p, _)| *p == parent) {
        let leaves: Vec<&str> = names.iter().map(|(_, l)| l.as_str()).collect();
        if parent.is_empty() { leaves.join("+") } else { format!("{parent}.{}", leaves.join("+")) }
    } else {
        parts.iter().map(|p| p.scope.prefix()).collect::<Vec<_>>().join("+")
    };
    format!("{joined}.{kind}")
}

/// One matrix of a (possibly stacked) projection: where it is stored, its output width, and a
/// constant folded into it.
pub struct Projection<'a> {
    scope: Scope<'a>,
    out_dim: usize,
    factor: f64,
}

impl<'a> Projection<'a> {
    /// Where the part's tensors are.
    pub fn scope(&self) -> &Scope<'a> {
        &self.scope
    }
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    pub fn new(scope: Scope<'a>, out_dim: usize) -> Self {
        Projection { scope, out_dim, factor: 1.0 }
    }
    /// Multiplies the output (weights and bias) by `factor`, so a constant that follows the
    /// projection (the attention scale) costs no kernel at run time.
    pub fn scaled(self, factor: f64) -> Self {
        Projection { factor: self.factor * factor, ..self }
    }
}

/// `y = x·Wᵀ (+ b)` over the last dimension, for inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    out_dim: usize,
}

impl Linear {
    pub fn load(scope: &Scope, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = scope.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(scope.get(&[out_dim], "bias")?) } else { None };
        Ok(Linear { weight: Weight::Dense(weight), bias, out_dim })
    }

    /// A projection over a quantized matrix (no bias).
    pub fn from_quantized(matrix: QuantizedMatrix, out_dim: usize) -> Self {
        Linear { weight: Weight::Quantized(matrix), bias: None, out_dim }
    }

    /// A projection over bf16 panels ([`cpu::bf16_panels`]).
    pub fn from_bf16_panels(matrix: std::sync::Arc<cpu::bf16_panels::Bf16Panels>) -> Self {
        let out_dim = matrix.dims().0;
        Linear { weight: Weight::Bf16(matrix), bias: None, out_dim }
    }

    /// A projection over a panel-major `[in_dim, out_dim]` matrix ([`cpu::panels`]).
    pub fn from_panels(matrix: cpu::panels::PanelBuffer, in_dim: usize, out_dim: usize) -> Self {
        Linear { weight: Weight::Panels(matrix, in_dim), bias: None, out_dim }
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        let out_dim = weight.dims().first().copied().unwrap_or(0);
        Linear { weight: Weight::Dense(weight), bias, out_dim }
    }

    /// Loads projections that read the same input as one matmul (q/k/v, gate/up: one pass over
    /// the activations instead of several), each with its factor folded in, in `layout`.
    pub fn load_stacked(parts: &[Projection], in_dim: usize, bias: bool, layout: Layout) -> Result<Self> {
        if layout == Layout::OutIn {
            let mut linears = Vec::with_capacity(parts.len());
            for p in parts {
                let linear = Linear::load(&p.scope, in_dim, p.out_dim, bias)?;
                linears.push(if p.factor == 1.0 { linear } else { linear.scaled(p.factor)? });
            }
            return match linears.len() {
                1 => Ok(linears.remove(0)),
                _ => Linear::fused(&linears),
            };
        }
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        let Some(first) = parts.first() else { return Err(Error::Internal("a projection of no parts".into())) };
        let bias = if bias {
            let parts = parts.iter().map(|p| Ok((p.scope.get(&[p.out_dim], "bias")? * p.factor)?)).collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        if layout == Layout::Bf16Panels {
            let matrix = bf16_matrix(parts, in_dim, out_dim)?;
            return Ok(Linear { weight: Weight::Bf16(std::sync::Arc::new(matrix)), bias, out_dim });
        }
        let matrix = panel_matrix(&first.scope, &stacked_name(parts, "panels"), in_dim, out_dim, |stack| {
            for p in parts {
                p.scope.with_raw(&[p.out_dim, in_dim], "weight", |raw| stack.push(raw.bytes, raw.dtype, p.out_dim, p.factor as f32))?;
            }
            Ok(())
        })?;
        Ok(Linear { weight: Weight::Panels(matrix, in_dim), bias, out_dim })
    }

    /// The input width of a dense projection (`None` once quantized).
    pub fn in_dim(&self) -> Option<usize> {
        match &self.weight {
            Weight::Dense(w) => w.dim(1).ok(),
            Weight::Panels(_, k) => Some(*k),
            Weight::Bf16(w) => Some(w.dims().1),
            Weight::Quantized(_) => None,
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }

    /// The int8 panels this projection multiplies by, if that is how it is held.
    pub fn int8_panels(&self) -> Option<&std::sync::Arc<cpu::int8_panels::Int8Panels>> {
        match &self.weight {
            Weight::Quantized(QuantizedMatrix::Int8Panels(p)) => Some(p),
            _ => None,
        }
    }

    fn dense(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(w),
            Weight::Panels(..) | Weight::Bf16(_) | Weight::Quantized(_) => {
                Err(Error::Internal("only an [out, in] dense projection can be rescaled, fused or quantized".into()))
            }
        }
    }

    /// The same projection with quantized weights, and whether candle's original copy was
    /// released; unchanged (and `None`) when its input width is not a multiple of the block size.
    /// `keep` sees the quantized blocks before they are released.
    pub fn quantized(&self, q: Quantization, keep: KeepBlocks) -> Result<(Linear, Option<cpu::repacked::Outcome>)> {
        match quantize_matrix(self.dense()?, q, keep)? {
            Some((qm, outcome)) => Ok((Linear { weight: Weight::Quantized(qm), bias: self.bias.clone(), out_dim: self.out_dim }, Some(outcome))),
            None => Ok((self.clone(), None)),
        }
    }

    /// The same projection with its output multiplied by `factor` (weights and bias), so a
    /// constant that follows it (the attention scale) costs no kernel at run time.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        Ok(Linear {
            weight: Weight::Dense((self.dense()? * factor)?),
            bias: self.bias.as_ref().map(|b| b * factor).transpose()?,
            out_dim: self.out_dim,
        })
    }

    /// Stacks several projections that read the same input into one matmul (q/k/v, gate/up):
    /// one pass over the activations instead of several.
    pub fn fused(parts: &[Linear]) -> Result<Self> {
        let weights = parts.iter().map(Linear::dense).collect::<Result<Vec<&Tensor>>>()?;
        let weight = match cpu::huge_pages::cat_rows(&weights)? {
            Some(w) => w,
            None => Tensor::cat(&weights, 0)?,
        };
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        let out_dim = weight.dim(0)?;
        Ok(Linear { weight: Weight::Dense(weight), bias, out_dim })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, in_dim) = match dims.as_slice() {
            [lead @ .., last] => (lead.iter().product::<usize>(), *last),
            [] => return Err(candle_core::Error::Msg("Linear needs an input of rank >= 1".into()).into()),
        };
        let flat = x.reshape((rows, in_dim))?;
        // One position per sequence (a decode step, a batch's ragged step) takes the few-row
        // kernel up to `MAX_ROWS` rows, so that each row's sums are the same at every batch
        // size; a block of positions of one sequence (a prompt) only up to `MAX_BLOCK_ROWS`.
        // The panel kernel gives every row the same sums at any row count.
        let one_position = dims.len() >= 2 && dims[dims.len() - 2] == 1;
        let few = rows <= if one_position { cpu::matvec::MAX_ROWS } else { cpu::matvec::MAX_BLOCK_ROWS };
        let mut y = match &self.weight {
            Weight::Dense(w) => match few.then(|| cpu::matvec::small_matmul(&flat, w)).transpose()?.flatten() {
                Some(y) => y,
                None => flat.matmul(&w.t()?)?,
            },
            Weight::Panels(wp, k) => cpu::panels::matmul_tensor(&flat, wp.as_slice(), *k, self.out_dim)?,
            Weight::Quantized(QuantizedMatrix::Int8Panels(w)) => host_matmul(&flat, rows, self.out_dim, |xs| w.matmul(xs, rows))?,
            Weight::Quantized(QuantizedMatrix::Int4Panels(w)) => host_matmul(&flat, rows, self.out_dim, |xs| w.matmul(xs, rows))?,
            Weight::Bf16(w) => host_matmul(&flat, rows, self.out_dim, |xs| w.matmul(xs, rows))?,
            Weight::Quantized(QuantizedMatrix::Candle(q)) => match cpu::q8_0::matmul(q, &flat)? {
                Some(y) => y,
                None => q.forward(&flat.contiguous()?)?,
            },
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim;
        }
        Ok(y.reshape(out_dims)?)
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
}

/// `[rows, out_dim]` from one of our CPU kernels over `x`'s f32 values.
fn host_matmul(x: &Tensor, rows: usize, out_dim: usize, product: impl FnOnce(&[f32]) -> Vec<f32>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = cpu::with_f32_slice(&x, |xs| Ok(product(xs)))?.ok_or_else(|| Error::Internal("a CPU kernel's input is not f32 on the CPU".into()))?;
    Ok(Tensor::from_vec(y, (rows, out_dim), x.device())?)
}
