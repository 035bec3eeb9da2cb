//! Small building blocks shared by the vision tower and the decoder.

use candle_core::{DType, Module, Tensor};

use crate::error::Result;
use crate::weights::Scope;

/// `y = x·Wᵀ (+ b)` over the last dimension, for inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(scope: &Scope, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = scope.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(scope.get(&[out_dim], "bias")?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// The same projection with its output multiplied by `factor` (weights and bias), so a
    /// constant that follows it (the attention scale) costs no kernel at run time.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        Ok(Linear { weight: (&self.weight * factor)?, bias: self.bias.as_ref().map(|b| b * factor).transpose()? })
    }

    /// Stacks several projections that read the same input into one matmul (q/k/v, gate/up):
    /// one pass over the activations instead of several.
    pub fn fused(parts: &[Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, in_dim) = match dims.as_slice() {
            [lead @ .., last] => (lead.iter().product::<usize>(), *last),
            [] => return Err(candle_core::Error::Msg("Linear needs an input of rank >= 1".into()).into()),
        };
        let flat = x.reshape((rows, in_dim))?;
        let mut y = flat.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        Ok(y.reshape(out_dims)?)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// LayerNorm with weight and bias (SigLIP), fused.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(scope: &Scope, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm { weight: scope.get(&[dim], "weight")?, bias: scope.get(&[dim], "bias")?, eps: eps as f32 })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Gemma's RMSNorm: `x · rsqrt(mean(x²) + eps) · (1 + w)`, statistics in f32 (spec §2.4).
/// The checkpoint stores the zero-centred `w`; `1 + w` is folded in once at load time.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    alpha: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(scope: &Scope, dim: usize, eps: f64) -> Result<Self> {
        // 1 + w in f32 first, then one rounding to the compute dtype.
        let w = scope.get_as(&[dim], "weight", DType::F32)?;
        let alpha = (w + 1.0)?.to_dtype(scope.dtype())?;
        Ok(RmsNorm { alpha, eps: eps as f32 })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.alpha, self.eps)?)
    }
}

/// tanh-approximated GELU (`gelu_pytorch_tanh`). candle's `Activation::Gelu` is the erf version
/// and must not be used here (spec §2.2).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::Activation::GeluPytorchTanh.forward(x)?)
}

/// Softmax over the last dimension, as one fused kernel (candle's generic `softmax` is five
/// kernels with slow reductions; on a GPU that dominated the 448 px prefill).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}
