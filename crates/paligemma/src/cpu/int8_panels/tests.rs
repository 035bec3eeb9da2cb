//! The int8 panel kernel against exact references, across its two paths bit for bit, and its
//! row-count invariance, which continuous batching relies on.

use candle_core::quantized::GgmlDType;

use super::*;
use crate::cpu::test_values as values;

/// A `[n, k]` matrix in candle's `q8_0` bytes, and the f32 values those bytes stand for.
fn quantized(n: usize, k: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
    crate::cpu::test_quantized(n, k, seed, GgmlDType::Q8_0)
}

/// `(n, k)`: one panel and many, one block and many, a task's panels and a partial task.
const SHAPES: [(usize, usize); 6] = [(16, 32), (32, 64), (48, 96), (160, 256), (272, 512), (64, 2048)];
const ROWS: [usize; 10] = [1, 2, 3, 5, 6, 7, 12, 13, 16, 40];

#[test]
fn each_block_is_the_exact_integer_sum_scaled_once() {
    // The reference takes the kernel's own rounding of x, so what is left to check is the
    // integer sums, the +128 correction and the scales: one f32 rounding per block and output.
    for (n, k) in SHAPES {
        let (bytes, _) = quantized(n, k, (n * 7 + k) as u32);
        let w = Int8Panels::from_q8_0(&bytes, n, k).unwrap();
        let kb = k / BLOCK;
        for m in [1, 6, 13] {
            let x = values(m * k, (m * 31 + k) as u32);
            let xq = QuantizedRows::new(&x, m, k);
            let y = w.matmul(&x, m);
            for i in 0..m {
                for j in 0..n {
                    let row = &bytes[j * kb * Q8_0_BYTES..][..kb * Q8_0_BYTES];
                    let want: f64 = row
                        .chunks_exact(Q8_0_BYTES)
                        .enumerate()
                        .map(|(b, block)| {
                            let dw = f16::from_le_bytes([block[0], block[1]]).to_f32() as f64;
                            let sum: i64 = (0..BLOCK).map(|c| i64::from(block[2 + c] as i8) * i64::from(xq.values[i * k + b * BLOCK + c])).sum();
                            sum as f64 * dw * xq.scales[i * kb + b] as f64
                        })
                        .sum();
                    let got = y[i * n + j] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "[{n}, {k}] m={m} at ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn tracks_the_f32_product_of_the_dequantized_matrix() {
    // Rounding x to 8 bits per block of 32 is the only approximation left: relative to the
    // largest output, the error stays within that rounding's size (1/254 of a block's max).
    let (n, k) = (64, 2048);
    let (bytes, dequantized) = quantized(n, k, 3);
    let w = Int8Panels::from_q8_0(&bytes, n, k).unwrap();
    let m = 4;
    let x = values(m * k, 9);
    let y = w.matmul(&x, m);
    let mut worst = 0f64;
    let mut largest = 0f64;
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|c| x[i * k + c] as f64 * dequantized[j * k + c] as f64).sum();
            worst = worst.max((y[i * n + j] as f64 - want).abs());
            largest = largest.max(want.abs());
        }
    }
    assert!(worst <= 0.01 * largest, "max error {worst} against outputs up to {largest}");
}

#[test]
fn vnni_and_portable_paths_give_the_same_bits() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    for (n, k) in SHAPES {
        let (bytes, _) = quantized(n, k, (n + k) as u32);
        let w = Int8Panels::from_q8_0(&bytes, n, k).unwrap();
        crate::cpu::assert_paths_agree(&format!("int8 [{n}, {k}]"), k, &ROWS, |x, m, vnni| w.matmul_with(x, m, vnni));
    }
}

#[test]
fn a_row_has_the_same_bits_alone_and_in_any_batch() {
    let (n, k) = (272, 512);
    let (bytes, _) = quantized(n, k, 11);
    let w = Int8Panels::from_q8_0(&bytes, n, k).unwrap();
    crate::cpu::assert_rows_keep_their_bits("int8", n, k, &ROWS, 12, |x, m| w.matmul(x, m));
}

#[test]
fn zero_rows_give_zeros_and_non_finite_inputs_are_not_hidden() {
    let (n, k) = (16, 64);
    let (bytes, _) = quantized(n, k, 5);
    let w = Int8Panels::from_q8_0(&bytes, n, k).unwrap();
    let mut x = vec![0f32; k];
    assert!(w.matmul(&x, 1).iter().all(|&v| v == 0.0), "a zero row gives zeros");
    x[40] = f32::INFINITY;
    x[3] = 1.0;
    // As in f32, an infinite input makes the row's outputs non-finite rather than some number.
    let y = w.matmul(&x, 1);
    assert!(y.iter().all(|v| !v.is_finite()), "{y:?}");
}

#[test]
fn wrong_sizes_are_refused() {
    let (bytes, _) = quantized(16, 64, 1);
    assert!(Int8Panels::from_q8_0(&bytes, 16, 64).is_ok());
    assert!(Int8Panels::from_q8_0(&bytes[1..], 16, 64).is_err());
    assert!(Int8Panels::from_q8_0(&bytes, 16, 128).is_err(), "too few bytes for the shape");
    assert!(!Int8Panels::fits(15, 64) && !Int8Panels::fits(16, 48) && Int8Panels::fits(16, 32));
}

#[test]
fn stored_panels_turn_back_into_the_same_q8_0_blocks() {
    // A CPU without VNNI reads a prepared folder's panels this way, into candle's kernels.
    for (n, k) in SHAPES {
        let (bytes, _) = quantized(n, k, (3 * n + k) as u32);
        let stored = Int8Panels::from_q8_0(&bytes, n, k).unwrap().stored_bytes();
        assert_eq!(stored.len(), Int8Panels::stored_len(n, k));
        assert_eq!(Int8Panels::q8_0_from_stored(&stored, n, k).unwrap(), bytes, "[{n}, {k}]");
    }
    assert!(Int8Panels::q8_0_from_stored(&[0; 10], 16, 32).is_err());
}
