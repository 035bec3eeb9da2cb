//! `q8_0` matrices on CPUs where candle keeps `q8_0` unpacked.
//!
//! Why: without VNNI (AVX2 only: Intel before Ice Lake and Alder Lake, AMD before Zen 4) candle
//! does not repack `q8_0` ([`super::repacked`]). Its unpacked kernel then costs a prompt about
//! what as many single-row products cost (1.5 s for 266 rows of `[32768, 2048]`, against 13 ms
//! for 2), with no reuse of the weights across rows. On the 2-core AVX2 bench host that gave
//! PaliGemma-3B-224 a TTFT of 47 s in `q8_0`, 3.4× its f32 TTFT (benches/RESULTS.md). So:
//! - **Prompts** (`GEMM_MIN_ROWS` rows or more): each band of output rows is dequantized into an f32
//!   scratch small enough to stay in the cache, and multiplied by gemm. A prompt then costs about
//!   what it costs in f32, plus one pass over the matrix's bytes. The activations stay f32, where
//!   candle's kernel rounds them to 8 bits, so the result is also closer to the f32 model.
//! - **Decode, batches and short extensions** (fewer rows): candle's own arithmetic (activations rounded
//!   to `q8_0` blocks, AVX2 `maddubs` dot products), but each weight row is read once for all the
//!   rows of `x`, and the work is split in contiguous row ranges. Against candle's kernel it is
//!   1.2–1.3× at one row and 1.2–2.7× at 4 to 48 (the large matrices gain most).

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::Result;

/// From this many rows on, dequantizing for gemm beats reading the 8-bit weights once per call
/// ([`few_rows`]): at 48 rows the latter still wins on two of PaliGemma-3B's three layer shapes,
/// at 56 gemm does (`examples/q8_0_bench`, benches/RESULTS.md).
pub const GEMM_MIN_ROWS: usize = 56;

/// Output rows per band: as many as keep the band's f32 scratch within `SCRATCH_BYTES`, so it
/// stays in the cache between the dequantization and gemm, but never so few that gemm's repacking
/// of the prompt for every band dominates.
fn band_rows(k: usize) -> usize {
    (SCRATCH_BYTES / 4 / k).clamp(16, 256) / 16 * 16
}
const SCRATCH_BYTES: usize = 2 << 20;

const BLOCK: usize = 32;
/// A `q8_0` block: an f16 scale, then 32 signed bytes (`BlockQ8_0`, `repr(C)`).
const BLOCK_BYTES: usize = 2 + BLOCK;

thread_local! {
    /// Each pool thread's band scratch, kept between calls: fresh pages cost more than the
    /// dequantization itself on the bench VM (benches/RESULTS.md, profile item 13).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x·Wᵀ` for `x` of `[m, k]` f32; `None` for any other input, or where candle repacks `q8_0`
/// (its repacked kernels are faster, and [`super::repacked`] may have released the original
/// bytes this reads).
pub fn matmul(qm: &QMatMul, x: &Tensor) -> Result<Option<Tensor>> {
    let QMatMul::QTensor(qt) = qm else { return Ok(None) };
    let (Ok((n, k)), Ok((m, xk))) = (qt.shape().dims2(), x.dims2()) else { return Ok(None) };
    if qt.dtype() != GgmlDType::Q8_0
        || !qt.device().is_cpu()
        || x.dtype() != DType::F32
        || xk != k
        || k % BLOCK != 0
        || super::repacked::candle_repacks(GgmlDType::Q8_0, n, k)
    {
        return Ok(None);
    }
    let data = qt.data()?;
    if data.len() != n * (k / BLOCK) * BLOCK_BYTES {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let out = if m < GEMM_MIN_ROWS {
        if !cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) {
            return Ok(None);
        }
        super::with_f32_slice(&x, |lhs| Ok(few_rows(&data, lhs, m, n, k)))?
    } else {
        super::with_f32_slice(&x, |lhs| Ok(multiply(&data, lhs, m, n, k)))?
    };
    match out {
        Some(out) => Ok(Some(Tensor::from_vec(out, (m, n), x.device())?)),
        None => Ok(None),
    }
}

fn multiply(weights: &[u8], lhs: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_addr = out.as_mut_ptr() as usize;
    let row_bytes = (k / BLOCK) * BLOCK_BYTES;
    let band_rows = band_rows(k);
    (0..n.div_ceil(band_rows)).into_par_iter().for_each(|band| {
        let first = band * band_rows;
        let width = band_rows.min(n - first);
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(k * band_rows, 0.0);
            let scratch = &mut scratch[..width * k];
            dequantize_rows(&weights[first * row_bytes..(first + width) * row_bytes], scratch);
            // out[:, first..first + width] = lhs [m, k] · scratchᵀ [k, width]. A row-major `[m, n]`
            // output, written in place: a transposed one, contiguous per band, made gemm 1.5–2.2×
            // slower at 266 rows.
            // SAFETY: this band alone writes columns [first, first + width) of `out`; its last
            // element, (m − 1)·n + first + width − 1, lies inside `out`, which outlives the loop.
            // lhs is `[m, k]` and the scratch `[width, k]`, both fully initialised.
            unsafe { super::product_raw((out_addr as *mut f32).add(first), (n, 1), lhs, (k, 1), scratch, (1, k), (m, width, k)) };
        });
    });
    out
}

/// `[n, m]` as `[m, n]`.
fn transposed(out_t: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    out
}

/// Writes `rows` q8_0 rows of width `k` into `dst` as f32 `[rows, k]`: 32 values per block,
/// one scale each, a loop the compiler vectorises.
fn dequantize_rows(bytes: &[u8], dst: &mut [f32]) {
    for (block, out) in bytes.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(BLOCK)) {
        let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (o, &q) in out.iter_mut().zip(&block[2..]) {
            *o = q as i8 as f32 * scale;
        }
    }
}

/// Weight rows per parallel task of [`few_rows`]: 32 tasks for PaliGemma's smallest matrix.
const ROWS_PER_TASK: usize = 64;

/// `lhs·Wᵀ` for a few rows, each weight row read once for all of them.
fn few_rows(weights: &[u8], lhs: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let row_bytes = (k / BLOCK) * BLOCK_BYTES;
    // Transposed, `[n, m]`, so that each task writes one contiguous stretch.
    let mut out_t = vec![0f32; n * m];
    let xq: Vec<Vec<QuantizedBlock>> = (0..m).map(|i| quantize_row(&lhs[i * k..(i + 1) * k])).collect();
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
        let first = task * ROWS_PER_TASK;
        for (r, o) in out.chunks_exact_mut(m).enumerate() {
            let row = &weights[(first + r) * row_bytes..(first + r + 1) * row_bytes];
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = dot(row, &xq[i]);
            }
        }
    });
    transposed(out_t, n, m)
}

/// A block of activations in `q8_0`: its scale (rounded through f16, as candle stores it) and
/// 32 values.
type QuantizedBlock = (f32, [i8; BLOCK]);

/// One activation row in `q8_0` blocks, the way candle's `BlockQ8_0::from_float` makes them, so
/// decode gives candle's products.
fn quantize_row(x: &[f32]) -> Vec<QuantizedBlock> {
    x.chunks_exact(BLOCK)
        .map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut q = [0i8; BLOCK];
            for (qi, v) in q.iter_mut().zip(b) {
                *qi = (v * inv).round() as i8;
            }
            (f16::from_f32(d).to_f32(), q)
        })
        .collect()
}

/// One weight row against one quantized activation row: per block, `maddubs` of |w| and x with
/// w's signs (products of at most 128 · 127, pairs within i16), widened and scaled in f32.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn dot(row: &[u8], xq: &[QuantizedBlock]) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the target features are enabled at compile time (cfg above). Each load reads the
    // 32 value bytes of one block, which `chunks_exact` keeps inside `row`, or the 32 values of
    // one `xq` entry.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (block, (dx, qx)) in row.chunks_exact(BLOCK_BYTES).zip(xq) {
            let dw = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let w = _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i);
            let x = _mm256_loadu_si256(qx.as_ptr() as *const __m256i);
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            let sums = _mm256_madd_epi16(pairs, ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * dx), acc);
        }
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }
}

/// The same sums without AVX2 (where [`matmul`] leaves few rows to candle's kernels, which have
/// their own SIMD paths).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot(row: &[u8], xq: &[QuantizedBlock]) -> f32 {
    row.chunks_exact(BLOCK_BYTES)
        .zip(xq)
        .map(|(block, (dx, qx))| {
            let dw = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let sum: i32 = block[2..].iter().zip(qx).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum();
            sum as f32 * (dw * dx)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Module};

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut state = seed;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn prompt_rows_match_the_dequantized_matrix_in_f32() {
        // Widths that leave a partial band.
        for (n, k, m) in [(600, 256, GEMM_MIN_ROWS), (1037, 512, 61), (16, 64, 64)] {
            let w = random(n, k, n as u64);
            let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let dequantized = qt.dequantize(&Device::Cpu).unwrap();
            let qm = QMatMul::from_qtensor(qt).unwrap();
            let x = random(m, k, 7);
            let want = x.matmul(&dequantized.t().unwrap()).unwrap();
            match matmul(&qm, &x).unwrap() {
                Some(got) => {
                    let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(err < 1e-4, "{n}x{k}, {m} rows: max error {err}");
                }
                None => assert!(super::super::repacked::candle_repacks(GgmlDType::Q8_0, n, k), "taken unless candle repacks"),
            }
        }
    }

    #[test]
    fn few_rows_give_candles_products() {
        // Same arithmetic as candle's kernel (activations rounded to q8_0 blocks), only the order
        // of the f32 sums differs. A task boundary falls inside 600 rows; 1037 leaves a partial task.
        for (n, k, m) in [(600, 256, 1), (1037, 512, 4), (64, 64, GEMM_MIN_ROWS - 1)] {
            let qm = QMatMul::from_qtensor(QTensor::quantize(&random(n, k, 3), GgmlDType::Q8_0).unwrap()).unwrap();
            let x = random(m, k, 9);
            let want = qm.forward(&x).unwrap();
            match matmul(&qm, &x).unwrap() {
                Some(got) => {
                    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(err <= 1e-5 * scale, "{n}x{k}, {m} rows: max error {err} of {scale}");
                }
                None => assert!(
                    super::super::repacked::candle_repacks(GgmlDType::Q8_0, n, k) || !cfg!(target_feature = "avx2"),
                    "taken unless candle repacks"
                ),
            }
        }
    }

    #[test]
    fn other_types_are_left_to_candle() {
        let w = random(64, 64, 1);
        let q4 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap();
        assert!(matmul(&q4, &random(16, 64, 2)).unwrap().is_none());
        assert!(matmul(&q4, &random(1, 64, 2)).unwrap().is_none());
    }
}
