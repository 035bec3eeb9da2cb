//! The int4 panel kernel against exact references and candle's dequantization, across its two
//! paths bit for bit, and its row-count invariance.

use candle_core::quantized::GgmlDType;

use super::*;
use crate::cpu::test_values as values;

/// A `[n, k]` matrix in candle's Q4_K bytes, and the f32 values those bytes stand for.
fn quantized(n: usize, k: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
    crate::cpu::test_quantized(n, k, seed, GgmlDType::Q4K)
}

/// `(n, k)`: one panel and many, one super-block and many, a task's panels and a partial task.
const SHAPES: [(usize, usize); 5] = [(16, 256), (32, 512), (48, 768), (160, 256), (64, 2048)];
const ROWS: [usize; 10] = [1, 2, 3, 4, 5, 7, 8, 13, 16, 40];

#[test]
fn repacking_keeps_candles_values() {
    // Every weight D·q − M of the panels is candle's dequantized weight.
    for (n, k) in SHAPES {
        let (bytes, want) = quantized(n, k, (n * 3 + k) as u32);
        let w = Int4Panels::from_q4k(&bytes, n, k).unwrap();
        for row in 0..n {
            for c in 0..k {
                assert_eq!(w.value(row, c).to_bits(), want[row * k + c].to_bits(), "[{n}, {k}] ({row}, {c})");
            }
        }
    }
    assert!(Int4Panels::from_q4k(&[0; 10], 16, 256).is_err());
    assert!(!Int4Panels::fits(16, 128) && !Int4Panels::fits(8, 256));
}

#[test]
fn each_sub_block_is_the_exact_integer_sum_scaled_once() {
    for (n, k) in SHAPES {
        let (bytes, deq) = quantized(n, k, (n * 7 + k) as u32);
        let w = Int4Panels::from_q4k(&bytes, n, k).unwrap();
        for m in [1, 4, 13] {
            let x = values(m * k, (m * 31 + k) as u32);
            let xq = QuantizedRows::new(&x, m, k);
            let y = w.matmul(&x, m);
            for i in 0..m {
                for j in 0..n {
                    // Σ over inputs of (D·q − M)·d_x·x_q, in f64: the weights are candle's.
                    let want: f64 = (0..k).map(|c| f64::from(deq[j * k + c]) * f64::from(xq.scales[i * (k / SUB) + c / SUB]) * f64::from(xq.values[i * k + c])).sum();
                    let got = f64::from(y[i * n + j]);
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "[{n}, {k}] m={m} at ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn vnni_and_portable_paths_give_the_same_bits() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    for (n, k) in SHAPES {
        let (bytes, _) = quantized(n, k, (n + 3 * k) as u32);
        let w = Int4Panels::from_q4k(&bytes, n, k).unwrap();
        crate::cpu::assert_paths_agree(&format!("int4 [{n}, {k}]"), k, &ROWS, |x, m, vnni| w.matmul_with(x, m, vnni));
    }
}

#[test]
fn a_row_has_the_same_bits_alone_and_in_any_batch() {
    for (n, k) in SHAPES {
        let (bytes, _) = quantized(n, k, (5 * n + k) as u32);
        let w = Int4Panels::from_q4k(&bytes, n, k).unwrap();
        crate::cpu::assert_rows_keep_their_bits(&format!("int4 [{n}, {k}]"), n, k, &ROWS, (n + 11 * k) as u32, |x, m| w.matmul(x, m));
    }
}
