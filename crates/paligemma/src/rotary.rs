//! Rotary position embeddings, half-split ("rotate_half") variant (spec §2.7).
//!
//! Angles are computed in f32 exactly as transformers does (`inv_freq` from an f32 power, then
//! `position · inv_freq` in f32) and cos/sin are rounded to the activation dtype only at the end;
//! building the table in bf16 would make positions above 256 inexact (spec §8, candle pitfall).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

pub struct RotaryEmbedding {
    /// `[max_positions, head_dim / 2]`, indexed by position id.
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (theta as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for &f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(RotaryEmbedding { cos, sin })
    }

    /// Number of position ids the table covers.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x: [B, heads, T, head_dim]` for position ids `first..first + T`.
    pub fn apply(&self, x: &Tensor, first: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, first, t)?;
        let sin = self.sin.narrow(0, first, t)?;
        Self::apply_rows(x, &cos, &sin)
    }

    /// The cos and sin rows, `[B, 1, head_dim / 2]`, for the position ids that `rows: [B]` (u32)
    /// holds on the device, one per sequence: looked up once per decode step, shared by every
    /// layer.
    pub fn rows_at(&self, rows: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(rows, 0)?.unsqueeze(1)?, self.sin.index_select(rows, 0)?.unsqueeze(1)?))
    }

    /// Rotates `x: [B, heads, T, head_dim]` by rows from [`RotaryEmbedding::rows_at`]: the
    /// graph-safe form of [`RotaryEmbedding::apply`].
    pub fn apply_rows(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
    }
}
