//! Hand-written CPU kernels for the shapes where candle's generic CPU ops are far from the
//! machine's limits (each module says what it replaced and what it measured). Every entry point
//! takes candle tensors, returns `None` for inputs it does not cover, and the caller then uses
//! the candle op, so the GPU path and other dtypes are unchanged.

pub mod activation;
pub mod attention;
pub mod bf16_panels;
pub mod huge_pages;
pub mod int4_panels;
pub mod int8_panels;
pub mod matvec;
pub mod panels;
pub mod q8_0;
pub mod repacked;
pub(crate) mod tiling;

use candle_core::{Storage, Tensor};
use gemm::{gemm, Parallelism};

use crate::error::Result;

/// Deterministic values in [-1, 1) without a random-number dependency (the kernels' tests).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[n, k]` matrix of [`test_values`] in candle's `dtype` blocks, and the f32 values those
/// bytes stand for (candle's dequantization).
#[cfg(test)]
pub(crate) fn test_quantized(n: usize, k: usize, seed: u32, dtype: candle_core::quantized::GgmlDType) -> (Vec<u8>, Vec<f32>) {
    use candle_core::{quantized::QTensor, Device};
    let w = Tensor::from_vec(test_values(n * k, seed), (n, k), &Device::Cpu).unwrap();
    let qt = QTensor::quantize(&w, dtype).unwrap();
    let dequantized = qt.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (qt.data().unwrap().into_owned(), dequantized)
}

/// The bits of each value (the kernels' tests compare outputs bit for bit).
#[cfg(test)]
pub(crate) fn test_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Checks a kernel's `matmul(x, m)` of `[m, k]` rows into `n` outputs: each of 40 rows has the
/// same bits alone and as row `i` of a batch of every size in `rows`.
#[cfg(test)]
pub(crate) fn assert_rows_keep_their_bits(what: &str, n: usize, k: usize, rows: &[usize], seed: u32, matmul: impl Fn(&[f32], usize) -> Vec<f32>) {
    let x = test_values(40 * k, seed);
    let alone: Vec<Vec<u32>> = (0..40).map(|i| test_bits(&matmul(&x[i * k..(i + 1) * k], 1))).collect();
    for &m in rows {
        let y = matmul(&x[..m * k], m);
        for (i, want) in alone.iter().enumerate().take(m) {
            assert_eq!(&test_bits(&y[i * n..(i + 1) * n]), want, "{what}: row {i} of {m}");
        }
    }
}

/// Checks that a kernel's native path (`matmul(x, m, true)`) gives the portable path's bits for
/// every row count in `rows`.
#[cfg(test)]
pub(crate) fn assert_paths_agree(what: &str, k: usize, rows: &[usize], matmul: impl Fn(&[f32], usize, bool) -> Vec<f32>) {
    for &m in rows {
        let x = test_values(m * k, (m * 17 + k) as u32);
        assert_eq!(test_bits(&matmul(&x, m, true)), test_bits(&matmul(&x, m, false)), "{what} m={m}");
    }
}

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

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` on this thread with gemm's kernels; each operand is a
/// slice with its (row, column) strides.
pub(crate) fn product(dst: &mut [f32], dst_strides: (usize, usize), lhs: &[f32], lhs_strides: (usize, usize), rhs: &[f32], rhs_strides: (usize, usize), (m, n, k): (usize, usize, usize)) {
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        m > 0 && n > 0 && k > 0
            && last(dst_strides, m, n) < dst.len()
            && last(lhs_strides, m, k) < lhs.len()
            && last(rhs_strides, k, n) < rhs.len(),
        "gemm operand out of bounds"
    );
    // SAFETY: the assertion above keeps every element gemm addresses, (rows − 1)·rs +
    // (cols − 1)·cs at most, inside its slice, and `dst` is borrowed exclusively.
    unsafe { product_raw(dst.as_mut_ptr(), dst_strides, lhs, lhs_strides, rhs, rhs_strides, (m, n, k)) }
}

/// [`product`] into a `dst` that other threads write around (disjoint elements of one buffer).
///
/// # Safety
/// Every `dst` element `i·rs + j·cs` (`i < m`, `j < n`) must be valid for writes and written by
/// no one else during the call, and `lhs`, `rhs` must hold every element their strides address.
/// `dst`'s prior contents are never read.
pub(crate) unsafe fn product_raw(
    dst: *mut f32,
    dst_strides: (usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    (m, n, k): (usize, usize, usize),
) {
    // SAFETY: the caller's contract; `read_dst = false`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            false,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
