//! Scaled dot-product attention shared by SigLIP and the decoder: GQA/MQA without copying K/V
//! per query head, optional Gemma 2 logit soft-capping, and an optional additive mask.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::layers::softmax_last_dim;

/// How scores are formed before the softmax.
pub struct AttentionSpec {
    /// Multiplier on `q·kᵀ`.
    pub scale: f64,
    /// Gemma 2: `scores = cap · tanh(scores / cap)`, applied before masking (spec §2.5).
    pub softcap: Option<f64>,
}

impl AttentionSpec {
    /// The factor to fold into the query projection: `scale`, or `scale / cap` with a soft-cap
    /// (then [`attend`] only has to apply `cap · tanh(·)`). Folding is exact in real
    /// arithmetic because RoPE is linear; it saves one or two kernels per layer and step.
    pub fn query_factor(&self) -> f64 {
        match self.softcap {
            Some(cap) => self.scale / cap,
            None => self.scale,
        }
    }
}

/// `q: [B, N, T, H]`, `k, v: [B, K, S, H]` with `K | N` → `[B, T, N·H]` (heads merged
/// head-major). `mask` is additive, 0 where allowed and −∞ where not: `[T, S]` for every
/// sequence, or `[B, T, S]`, one per sequence (a ragged fixed-shape step's rows stand at
/// different positions, [`crate::decode_step`]).
/// `q` must already carry [`AttentionSpec::query_factor`].
///
/// Query heads `j·G … (j+1)·G−1` share kv head `j` (G = N/K), so q is viewed as
/// `[B, K, G·T, H]` and multiplied against K directly: no `repeat_kv` copy (spec §2.4).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, spec: &AttentionSpec) -> Result<Tensor> {
    if let Some(out) = crate::cpu::attention::attend(q, k, v, mask, spec.softcap)? {
        return Ok(out);
    }
    let (b, n, t, h) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let g = n / kv;
    let q = q.reshape((b, kv, g * t, h))?;
    let mut scores = q.matmul(&k.t()?)?;
    let probs = match crate::cuda::masked_softmax(&scores, mask, spec.softcap)? {
        Some(probs) => probs,
        None => {
            if let Some(cap) = spec.softcap {
                scores = (scores.tanh()? * cap)?;
            }
            if let Some(mask) = mask {
                let mask = if mask.rank() == 3 { mask.reshape((b, 1, 1, t, s))? } else { mask.clone() };
                scores = scores.reshape((b, kv, g, t, s))?.broadcast_add(&mask)?.reshape((b, kv, g * t, s))?;
            }
            softmax_last_dim(&scores)?
        }
    };
    let out = probs.matmul(v)?; // [B, K, G·T, H]
    Ok(out.reshape((b, n, t, h))?.transpose(1, 2)?.reshape((b, t, n * h))?)
}

/// Which keys each query may see, for a block of `t` new tokens at absolute indices
/// `offset..offset + t` attending keys `0..offset + t`.
#[derive(Debug, Clone, Copy)]
pub struct MaskSpec {
    pub offset: usize,
    pub t: usize,
    /// Tokens `0..prefix_len` form the bidirectional prefix block (image + prompt, spec §2.6).
    pub prefix_len: usize,
    /// Gemma 2 sliding layers: a query sees at most this many most recent positions, except
    /// inside the prefix block (transformers 5.x semantics, spec §8 P7).
    pub window: Option<usize>,
}

impl MaskSpec {
    /// Whether query `i` (absolute) may attend key `j`.
    pub(crate) fn allowed(&self, i: usize, j: usize) -> bool {
        let same_prefix = i < self.prefix_len && j < self.prefix_len;
        let causal = j <= i && self.window.is_none_or(|w| i - j < w);
        same_prefix || causal
    }

    /// Whether every query may attend every key, decided without visiting the T×S pairs
    /// (a 448 px prompt would need a million checks per layer type).
    fn sees_everything(&self) -> bool {
        let s = self.offset + self.t;
        if s <= self.prefix_len {
            return true; // queries and keys all inside the bidirectional prefix block
        }
        if self.t != 1 {
            return false; // the first query cannot see the last key, which lies past the prefix
        }
        // One query at s − 1 ≥ prefix_len sees every earlier key causally; only a window hides
        // the oldest ones.
        self.window.is_none_or(|w| s - 1 < w)
    }

    /// The additive mask, or `None` when every query sees every key (the common case: a prompt
    /// that is all prefix, or one decode step without a window).
    pub fn build(&self, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        if self.sees_everything() {
            return Ok(None);
        }
        let s = self.offset + self.t;
        let queries = self.offset..s;
        let mut data = Vec::with_capacity(self.t * s);
        for i in queries {
            for j in 0..s {
                data.push(if self.allowed(i, j) { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        Ok(Some(Tensor::from_vec(data, (self.t, s), device)?.to_dtype(dtype)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_bidirectional_and_generation_causal() {
        let prefill = MaskSpec { offset: 0, t: 5, prefix_len: 5, window: None };
        assert!(prefill.build(DType::F32, &Device::Cpu).unwrap().is_none());
        let step = MaskSpec { offset: 5, t: 1, prefix_len: 5, window: None };
        assert!(step.build(DType::F32, &Device::Cpu).unwrap().is_none());
        // Prompt of 3 plus 2 suffix tokens processed together: the suffix is causal.
        let mixed = MaskSpec { offset: 0, t: 5, prefix_len: 3, window: None };
        let m = mixed.build(DType::F32, &Device::Cpu).unwrap().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0][2], 0.0, "prefix sees later prefix tokens");
        assert!(m[0][3].is_infinite(), "prefix never sees the suffix");
        assert_eq!(m[3][3], 0.0);
        assert!(m[3][4].is_infinite(), "suffix is causal");
        assert_eq!(m[4][0], 0.0);
    }

    #[test]
    fn the_shortcut_agrees_with_the_pairwise_rule() {
        for prefix_len in 0..5 {
            for offset in 0..6 {
                for t in 1..4 {
                    for window in [None, Some(1), Some(2), Some(4), Some(9)] {
                        let m = MaskSpec { offset, t, prefix_len, window };
                        let s = offset + t;
                        let pairwise = (offset..s).all(|i| (0..s).all(|j| m.allowed(i, j)));
                        assert_eq!(m.sees_everything(), pairwise, "{m:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn sliding_window_limits_only_beyond_the_prefix() {
        let w = MaskSpec { offset: 6, t: 1, prefix_len: 4, window: Some(3) };
        let m = w.build(DType::F32, &Device::Cpu).unwrap().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], vec![f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0, 0.0]);
        let inside = MaskSpec { offset: 0, t: 4, prefix_len: 4, window: Some(2) };
        assert!(inside.build(DType::F32, &Device::Cpu).unwrap().is_none(), "the prefix block stays bidirectional");
    }
}
