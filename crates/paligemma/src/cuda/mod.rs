//! Fused CUDA kernels (`fused.cu`) for chains that candle runs as several kernels.
//!
//! A decode step on a GPU is bound by its kernel count more than by the work in each kernel:
//! at batch 1 every kernel boundary costs a few microseconds even when the step is replayed as a
//! CUDA graph (`benches/RESULTS.md`). These four remove six kernels per Gemma layer and ten per
//! Gemma 2 layer of a decode step:
//! - the residual add and the RMSNorm after it (with Gemma 2's post-norm on the branch);
//! - GeGLU: the activation of the gate and its product with `up`;
//! - the attention soft-cap, the mask and the softmax;
//! - in the fixed-shape decode step, the rotary embedding of queries and keys and the cache
//!   write of keys and values.
//!
//! In the 448 px prefill they also read and write the large score matrices once instead of up
//! to four times. Like [`crate::cpu`], each entry point returns `None` where it does not apply
//! (not CUDA, a dtype or layout it does not cover, or turned off), and the caller then runs
//! candle's ops. `PALIGEMMA_FUSED_KERNELS=0` turns them all off and `=no-rope` only the last,
//! to time or bisect against them.

use candle_core::{Device, Tensor};

use crate::error::Result;

#[cfg(feature = "cuda")]
mod ops;
#[cfg(all(test, feature = "cuda"))]
mod tests;

/// `PALIGEMMA_FUSED_KERNELS`, read once.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn setting() -> &'static str {
    static SETTING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SETTING.get_or_init(|| std::env::var("PALIGEMMA_FUSED_KERNELS").unwrap_or_default())
}

/// Whether the fused kernels run on `device`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn enabled(device: &Device) -> bool {
    device.is_cuda() && setting() != "0"
}

/// `h = x + post(a)` and `rms_norm(h)·alpha`, where `post(a) = rms_norm(a)·post_alpha` when
/// `post_alpha` is given (the alphas hold `1 + w`). Returns `(h, normed)`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn add_norm(x: &Tensor, a: &Tensor, post_alpha: Option<&Tensor>, alpha: &Tensor, eps: f32) -> Result<Option<(Tensor, Tensor)>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) {
        return ops::add_norm(x, a, post_alpha, alpha, eps);
    }
    Ok(None)
}

/// `gelu_tanh(gate) ⊙ up` over a fused `[…, 2·hidden]` gate|up projection.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn geglu(gate_up: &Tensor, hidden: usize) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(gate_up.device()) {
        return ops::geglu(gate_up, hidden);
    }
    Ok(None)
}

/// `softmax(cap·tanh(scores) + mask)` over the last dimension; `scores: [B, K, G·T, S]`, `mask:
/// [T, S]` or, one per sequence, `[B, T, S]`, additive.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, softcap: Option<f64>) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(scores.device()) {
        return ops::masked_softmax(scores, mask, softcap);
    }
    Ok(None)
}

/// What the fixed-shape decode step's rotary embedding and cache write read and write.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct RopeStore<'a> {
    /// The fused projection, `[B, 1, (n + 2k)·d]`.
    pub qkv: &'a Tensor,
    /// `(n, k)`: query heads and key/value heads.
    pub heads: (usize, usize),
    /// `[B, d / 2]` each: every sequence's rotary row.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// `[B]` u32 on the device: every sequence's cache slot.
    pub slot: &'a Tensor,
    /// `[B, k, capacity, d]` each, written in place.
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
}

/// Rotates the query and key heads, writes keys and values into the caches at the slot, and
/// returns the rotated queries `[B, n, 1, d]`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn rope_and_store(args: &RopeStore) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(args.qkv.device()) && setting() != "no-rope" {
        return ops::rope_and_store(args);
    }
    Ok(None)
}
