//! Hand-written CPU kernels for the shapes where candle's generic CPU ops are far from the
//! machine's limits (each module says what it replaced and what it measured). Every entry point
//! takes candle tensors, returns `None` for inputs it does not cover, and the caller then uses
//! the candle op, so the GPU path and other dtypes are unchanged.

pub mod activation;
pub mod attention;
pub mod huge_pages;
pub mod matvec;
pub mod q8_0;
pub mod repacked;

use candle_core::{Storage, Tensor};

use crate::error::Result;

/// `a·b + c`, fused where the target has an FMA instruction (then it also vectorises);
/// elsewhere `mul_add` would be a slow libm call, so it is a plain multiply-add.
#[inline(always)]
pub(crate) fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
    {
        a * b + c
    }
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor; `None` for any other tensor.
pub(crate) fn with_f32_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<Option<R>> {
    if !t.device().is_cpu() || t.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    Ok(Some(f(&cpu.as_slice::<f32>()?[start..end])?))
}
