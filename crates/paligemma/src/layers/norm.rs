//! The norms of both towers: SigLIP's LayerNorm, Gemma's RMSNorm, and the residual add fused
//! with the norm that reads it.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::weights::Scope;

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

/// The residual add and the norm that reads its result: `h = x + post(a)`, then `(h,
/// next(h))`. `post` is Gemma 2's norm on the branch (spec §2.5); Gemma adds the branch as it
/// is. One kernel on CUDA ([`crate::cuda`]), up to three ops elsewhere.
pub fn add_then_norm(x: &Tensor, a: &Tensor, post: Option<&RmsNorm>, next: &RmsNorm) -> Result<(Tensor, Tensor)> {
    let post_alpha = post.map(|p| &p.alpha);
    // One eps for both norms: every norm of a decoder shares the config's `rms_norm_eps`.
    if post.is_none_or(|p| p.eps == next.eps) {
        if let Some(fused) = crate::cuda::add_norm(x, a, post_alpha, &next.alpha, next.eps)? {
            return Ok(fused);
        }
    }
    let h = match post {
        Some(p) => (x + p.forward(a)?)?,
        None => (x + a)?,
    };
    let normed = next.forward(&h)?;
    Ok((h, normed))
}
