//! The bf16 panel kernel against an exact reference, across its two paths bit for bit, and its
//! row-count invariance, which continuous batching relies on.

use candle_core::DType;

use super::*;
use crate::cpu::test_values as values;

/// `(n, k)`: one panel and many, a padded last panel, an odd depth, several chunks, a task's
/// panels and a partial task.
const SHAPES: [(usize, usize); 7] = [(16, 2), (16, 33), (40, 64), (160, 130), (272, 512), (64, 2048), (300, 257)];
const ROWS: [usize; 11] = [1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 40];

#[test]
fn rounds_like_the_hardware_conversion() {
    for v in [1.0f32, -2.5, 1.0 + f32::EPSILON, 3.0e-3, 65504.0, 1.0e30, -0.0, f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
    }
    // Ties go to even, subnormals to a signed zero, NaN stays NaN.
    assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(bf16_bits(f32::from_bits(0x8000_0001)), 0x8000);
    assert_eq!(bf16_bits(f32::from_bits(0x007f_ffff)), 0x0000);
    assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
}

#[test]
fn each_output_is_the_chain_of_exact_pair_products() {
    // The reference rounds both operands as the kernel does and sums in f64: what is left is
    // one f32 rounding per step, so the error stays within k rounding errors of the sum of
    // magnitudes.
    for (n, k) in SHAPES {
        let wf = values(n * k, (n * 7 + k) as u32);
        let w = Bf16Panels::from_rows(&wf, n, k).unwrap();
        for m in [1, 6, 13] {
            let x = values(m * k, (m * 31 + k) as u32);
            let y = w.matmul(&x, m);
            assert_eq!(y.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|c| f64::from(bf16_value(bf16_bits(x[i * k + c]))) * f64::from(w.value(j, c)));
                    let (want, magnitude) = terms.fold((0f64, 0f64), |(s, a), t| (s + t, a + t.abs()));
                    let got = f64::from(y[i * n + j]);
                    assert!((got - want).abs() <= k as f64 * f64::from(f32::EPSILON) * magnitude, "[{n}, {k}] m={m} at ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn native_and_portable_paths_give_the_same_bits() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for (n, k) in SHAPES {
        let w = Bf16Panels::from_rows(&values(n * k, (n + 3 * k) as u32), n, k).unwrap();
        crate::cpu::assert_paths_agree(&format!("bf16 [{n}, {k}]"), k, &ROWS, |x, m, native| w.matmul_with(x, m, native));
    }
}

#[test]
fn a_row_has_the_same_bits_alone_and_in_any_batch() {
    for (n, k) in SHAPES {
        let w = Bf16Panels::from_rows(&values(n * k, (5 * n + k) as u32), n, k).unwrap();
        crate::cpu::assert_rows_keep_their_bits(&format!("bf16 [{n}, {k}]"), n, k, &ROWS, (n + 11 * k) as u32, |x, m| w.matmul(x, m));
    }
}

#[test]
fn stacked_parts_with_factors_and_stored_dtypes() {
    // Two parts (the second starting mid-panel), f32 and bf16 bytes, a factor on the first: the
    // same panels as the scaled rows in one matrix.
    let k = 48;
    let (a, b) = (values(20 * k, 1), values(12 * k, 2));
    let b_bf16: Vec<u8> = b.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let mut stack = Bf16Stack::new(k, 32);
    stack.push(&a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(), DType::F32, 20, 0.125).unwrap();
    stack.push(&b_bf16, DType::BF16, 12, 1.0).unwrap();
    let stacked = stack.finish().unwrap();
    let mut rows: Vec<f32> = a.iter().map(|v| v * 0.125).collect();
    rows.extend(b.iter().map(|v| half::bf16::from_f32(*v).to_f32()));
    let whole = Bf16Panels::from_rows(&rows, 32, k).unwrap();
    for j in 0..32 {
        for c in 0..k {
            assert_eq!(stacked.value(j, c).to_bits(), whole.value(j, c).to_bits(), "({j}, {c})");
        }
    }
    assert!(Bf16Stack::new(k, 32).finish().is_err(), "unfilled rows");
    assert!(Bf16Stack::new(k, 4).push(&[0; 8], DType::F32, 4, 1.0).is_err(), "short bytes");
}

#[test]
fn f32_panels_round_to_the_same_matrix() {
    // A prepared folder's f32 panels give the bf16 matrix the checkpoint gives.
    for (n, k) in SHAPES {
        let w = values(n * k, (n * 13 + k) as u32);
        let transposed: Vec<f32> = (0..k).flat_map(|c| (0..n).map(move |j| (c, j))).map(|(c, j)| w[j * k + c]).collect();
        let packed = crate::cpu::panels::pack(&transposed, k, n);
        let (a, b) = (Bf16Panels::from_rows(&w, n, k).unwrap(), Bf16Panels::from_f32_panels(&packed, k, n).unwrap());
        assert!(a.lines.iter().zip(&b.lines).all(|(x, y)| x.0 == y.0), "[{n}, {k}]");
    }
    assert!(Bf16Panels::from_f32_panels(&[0.0; 3], 2, 2).is_err());
}
