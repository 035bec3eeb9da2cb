//! A prompt's rows through a `q8_0` matrix on CPUs where candle keeps `q8_0` unpacked.
//!
//! Why: without VNNI (AVX2 only: Intel before Ice Lake and Alder Lake, AMD before Zen 4) candle
//! does not repack `q8_0` ([`super::repacked`]), and its unpacked kernel costs a prompt about
//! what as many single-row products cost (1.5 s for 266 rows of `[32768, 2048]`, against 13 ms
//! for 2), with no reuse of the weights across rows. On the 2-core
//! AVX2 bench host PaliGemma-3B-224's TTFT was 47 s in `q8_0`, against 10.4 s in `q4k`
//! (benches/RESULTS.md). Here each band of output rows is dequantized into an f32 scratch small
//! enough to stay in the cache, and multiplied by gemm, so a prompt costs about what it costs in
//! f32, plus one pass over the matrix's bytes. Decode (one row) and short extensions stay on
//! candle's kernel, which streams the 8-bit weights once.
//!
//! The activations stay f32, where candle's kernel rounds them to 8 bits, so the result is
//! closer to the f32 model, not just faster.

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Tensor};
use gemm::{gemm, Parallelism};
use half::f16;
use rayon::prelude::*;

use crate::error::Result;

/// From this many rows on, dequantizing beats candle's unpacked kernel on every PaliGemma-3B shape
/// (1.2–1.5× at 16 rows, 0.4–0.7× at 8 except the down projection; `examples/q8_0_prompt_bench`,
/// benches/RESULTS.md); decode steps and short extensions stay on candle.
pub const MIN_ROWS: usize = 16;

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

/// `x·Wᵀ` for `x` of `[m, k]` f32 with `m ≥ MIN_ROWS`; `None` for any other input, or where candle
/// repacks `q8_0` (its repacked kernel is faster, and [`super::repacked`] may have released the
/// original bytes this reads).
pub fn matmul(qm: &QMatMul, x: &Tensor) -> Result<Option<Tensor>> {
    let QMatMul::QTensor(qt) = qm else { return Ok(None) };
    let (Ok((n, k)), Ok((m, xk))) = (qt.shape().dims2(), x.dims2()) else { return Ok(None) };
    if qt.dtype() != GgmlDType::Q8_0
        || !qt.device().is_cpu()
        || x.dtype() != DType::F32
        || m < MIN_ROWS
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
    let out = super::with_f32_slice(&x, |lhs| Ok(multiply(&data, lhs, m, n, k)))?;
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
            dequantize_rows(&weights[first * row_bytes..(first + width) * row_bytes], &mut scratch[..width * k]);
            // SAFETY: dst is columns [first, first + width) of the `[m, n]` output, which no
            // other band writes; its last element, (m − 1)·n + first + width − 1, is inside
            // `out`. lhs is `[m, k]` row-major and the scratch `[k, width]` row-major, both
            // fully initialised. `read_dst = false`, so dst's prior contents are never read.
            unsafe {
                gemm(
                    m,
                    width,
                    k,
                    (out_addr as *mut f32).add(first),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    scratch.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::Device;

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
        // Widths that leave a partial band and a partial group of eight.
        for (n, k, m) in [(600, 256, MIN_ROWS), (1037, 512, 37), (16, 64, 17)] {
            let w = random(n, k, n as u64);
            let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let dequantized = qt.dequantize(&Device::Cpu).unwrap();
            let qm = QMatMul::from_qtensor(qt).unwrap();
            let x = random(m, k, 7);
            let want = x.matmul(&dequantized.t().unwrap()).unwrap();
            match matmul(&qm, &x).unwrap() {
                Some(got) => {
                    let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(err < 1e-4, "{n}x{k}, {m} rows: max error {err}");
                }
                None => assert!(super::super::repacked::candle_repacks(GgmlDType::Q8_0, n, k), "taken unless candle repacks"),
            }
        }
    }

    #[test]
    fn decode_rows_and_other_types_are_left_to_candle() {
        let w = random(64, 64, 1);
        let q8 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        assert!(matmul(&q8, &random(MIN_ROWS - 1, 64, 2)).unwrap().is_none());
        let q4 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap();
        assert!(matmul(&q4, &random(16, 64, 2)).unwrap().is_none());
    }
}
