//! `y = x·Wᵀ` in f32 on the CPU for a handful of rows, for matrices that stay `[out, in]` on
//! the CPU in f32 (those a quantized model could not quantize); the dense projections of an f32
//! model are panel-major and go through [`super::panels`].
//!
//! Why not candle's matmul: for M = 1 it goes through `gemm`, which runs the product on one
//! thread (measured 9 GB/s of weights, a single core's share of the bandwidth; benches/RESULTS.md).
//! Decode is bound by reading W once per token, so the work here is split over W's rows across
//! the current rayon pool (the model's pool in the Node binding), and every row of W is read
//! once from memory and dotted with all of x's rows while it is in cache. W is `[out, in]`
//! row-major, so each output is one contiguous dot product: no transposition, no packing.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::with_f32_slice;
use crate::error::Result;

/// Up to this many input rows take this path; beyond it the product is compute-bound and
/// gemm's packed kernels win. Every row's sums here are the same whatever the row count (each
/// output is one dot product of one row).
pub const MAX_ROWS: usize = 16;

/// Rows of a block of positions of one sequence (a prompt) that take this path: past 8, gemm's
/// packed kernels win there, and the arithmetic of prompts stays what it was before batching.
pub const MAX_BLOCK_ROWS: usize = 8;

/// Output rows of W per rayon task: small enough to balance two to a few dozen threads over
/// the narrowest projection (2048 outputs), large enough that scheduling costs nothing.
const ROWS_PER_TASK: usize = 64;

/// `x·Wᵀ` for `x: [m, k]` and `w: [n, k]`, both f32 on the CPU with `m ≤ MAX_ROWS`; `None`
/// when the inputs do not qualify (the caller then uses candle's matmul).
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (n, k) = w.dims2()?;
    with_operands(x, w, k, n, |xs, ws, m| matmul_rows(xs, ws, m, k, n))
}

/// Runs `product(x, w, m)` on the f32 CPU data of `x: [m, k]` (made contiguous) and of a
/// contiguous `w`, giving `[m, n]`; `None` when either does not qualify.
fn with_operands(x: &Tensor, w: &Tensor, k: usize, n: usize, product: impl FnOnce(&[f32], &[f32], usize) -> Vec<f32>) -> Result<Option<Tensor>> {
    let (m, x_k) = x.dims2()?;
    if m == 0 || m > MAX_ROWS || x_k != k || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let y = with_f32_slice(&x, |xs| with_f32_slice(w, |ws| Ok(product(xs, ws, m))))?.flatten();
    y.map(|y| Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)).transpose()
}

/// `y[i, j] = Σ_c x[i, c] · w[j, c]`, row-major slices; y is `[m, n]`.
fn matmul_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    // Each task owns ROWS_PER_TASK consecutive outputs for every input row, stored
    // output-major ([n, m]) so that tasks write disjoint contiguous chunks.
    let mut y_t = vec![0f32; n * m];
    y_t.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            // Four rows of W at a time: four independent streams keep more cache misses in
            // flight than one, which is what a bandwidth-bound loop needs.
            let done = (out.len() / m) / 4 * 4;
            let mut groups = out.chunks_exact_mut(4 * m);
            for (g, out_rows) in (&mut groups).enumerate() {
                let row = |r: usize| &w[(first + 4 * g + r) * k..][..k];
                let rows = [row(0), row(1), row(2), row(3)];
                for i in 0..m {
                    let ys = dot4(&x[i * k..][..k], rows);
                    for (r, y) in ys.into_iter().enumerate() {
                        out_rows[r * m + i] = y;
                    }
                }
            }
            for (r, out_row) in groups.into_remainder().chunks_exact_mut(m).enumerate() {
                let w_row = &w[(first + done + r) * k..][..k];
                for (i, y) in out_row.iter_mut().enumerate() {
                    *y = dot(&x[i * k..][..k], w_row);
                }
            }
        });
    if m == 1 {
        return y_t;
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in y_t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

/// Dot product at load speed: four independent 8-wide FMA chains hide the FMA latency.
/// The binary is built with AVX2 and FMA on x86-64 (`.cargo/config.toml`), so this is the
/// path there; LLVM does not vectorise the portable loop below (it keeps the additions in order).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let len = a.len().min(b.len());
    let blocks = len / STEP;
    // SAFETY: the target features are enabled at compile time (cfg above), and every load
    // reads 8 floats inside `[0, blocks * STEP) ⊆ [0, len)` of both slices.
    let mut sum = unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for blk in 0..blocks {
            let base = blk * STEP;
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let off = base + r * 8;
                *acc_r = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(off)),
                    _mm256_loadu_ps(pb.add(off)),
                    *acc_r,
                );
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let lanes = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(lanes, _mm_movehl_ps(lanes, lanes));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
    };
    for c in blocks * STEP..len {
        sum = a[c].mul_add(b[c], sum);
    }
    sum
}

/// Four dot products of `a` with `rows` in one pass over `a`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn dot4(a: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    const STEP: usize = 16;
    let len = rows.iter().fold(a.len(), |l, r| l.min(r.len()));
    let blocks = len / STEP;
    let mut sums = [0f32; 4];
    // SAFETY: AVX2 and FMA are enabled at compile time (cfg above); every load reads 8 floats
    // inside `[0, blocks * STEP) ⊆ [0, len)` of `a` and of each row.
    unsafe {
        let pa = a.as_ptr();
        let pw = rows.map(|r| r.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for blk in 0..blocks {
            let off = blk * STEP;
            let (x0, x1) = (_mm256_loadu_ps(pa.add(off)), _mm256_loadu_ps(pa.add(off + 8)));
            for r in 0..4 {
                acc[r][0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pw[r].add(off)), acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pw[r].add(off + 8)), acc[r][1]);
            }
        }
        for r in 0..4 {
            let v = _mm256_add_ps(acc[r][0], acc[r][1]);
            let lanes = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pairs = _mm_add_ps(lanes, _mm_movehl_ps(lanes, lanes));
            sums[r] = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
        }
    }
    for c in blocks * STEP..len {
        for r in 0..4 {
            sums[r] = a[c].mul_add(rows[r][c], sums[r]);
        }
    }
    sums
}

/// Four dot products of `a` with `rows`.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot4(a: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    rows.map(|r| dot(a, r))
}

/// Portable dot product with independent partial sums (vectorised by LLVM where it can).
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_blocks, a_tail) = a.as_chunks::<LANES>();
    let (b_blocks, b_tail) = b.as_chunks::<LANES>();
    for (ab, bb) in a_blocks.iter().zip(b_blocks) {
        for l in 0..LANES {
            acc[l] += ab[l] * bb[l];
        }
    }
    let head: f32 = acc.iter().sum();
    a_tail.iter().zip(b_tail).fold(head, |s, (p, q)| s + p * q)
}

#[cfg(test)]
mod tests;
