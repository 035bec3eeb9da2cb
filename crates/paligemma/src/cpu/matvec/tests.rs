//! The few-row kernels against a float64 reference and candle, and their row-count invariance.

use super::*;

fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                .sum();
        }
    }
    y
}

use crate::cpu::test_values as values;

#[test]
fn matches_a_float64_reference_across_shapes() {
    // k around the lane width and odd, n around the task size, every m up to MAX_ROWS.
    for &(k, n) in &[
        (1, 1),
        (7, 3),
        (31, 65),
        (32, 64),
        (33, 129),
        (100, 200),
        (2048, 130),
    ] {
        for m in 1..=MAX_ROWS {
            let x = values(m * k, (m * 131 + k) as u32);
            let w = values(n * k, (n * 17 + k) as u32);
            let y = matmul_rows(&x, &w, m, k, n);
            let r = reference(&x, &w, m, k, n);
            for (idx, (a, b)) in y.iter().zip(&r).enumerate() {
                let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                assert!(
                    (*a as f64 - b).abs() <= tol,
                    "m={m} k={k} n={n} at {idx}: {a} vs {b}"
                );
            }
        }
    }
}

/// Continuous batching relies on this: a row's output does not depend on how many other
/// rows share the product (`crate::batching`), bit for bit.
#[test]
fn each_row_is_bitwise_the_same_whatever_the_row_count() {
    for &(k, n) in &[(33usize, 129usize), (260, 2 * 2048 + 77), (64, 256), (131, 16)] {
        let x = values(MAX_ROWS * k, (k + n) as u32);
        let w = values(n * k, (n * 5 + k) as u32);
        let alone: Vec<Vec<u32>> = (0..MAX_ROWS)
            .map(|i| {
                let xi = &x[i * k..(i + 1) * k];
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                bits(matmul_rows(xi, &w, 1, k, n))
            })
            .collect();
        for m in 2..=MAX_ROWS {
            let rows = matmul_rows(&x[..m * k], &w, m, k, n);
            for i in 0..m {
                let got: Vec<u32> = rows[i * n..(i + 1) * n].iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, alone[i], "k={k} n={n}: row {i} of {m}");
            }
        }
    }
}

#[test]
fn tensor_entry_point_agrees_with_candle_and_declines_what_it_cannot_do() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(values(3 * 40, 1), &dev)?.reshape((3, 40))?;
    let w = Tensor::new(values(70 * 40, 2), &dev)?.reshape((70, 40))?;
    let ours = small_matmul(&x, &w)?.expect("f32 CPU inputs qualify");
    let candle = x.matmul(&w.t()?)?;
    let diff = (ours - candle)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "{diff}");
    // A strided x (a transposed view) is made contiguous first.
    let x_t = Tensor::new(values(40 * 2, 3), &dev)?
        .reshape((40, 2))?
        .t()?;
    let ours = small_matmul(&x_t, &w)?.expect("qualifies");
    let diff = (ours - x_t.matmul(&w.t()?)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-5, "{diff}");
    // Too many rows, another dtype, or a transposed W: left to candle.
    let many = Tensor::zeros((MAX_ROWS + 1, 40), DType::F32, &dev)?;
    assert!(small_matmul(&many, &w)?.is_none());
    assert!(small_matmul(&x.to_dtype(DType::F16)?, &w.to_dtype(DType::F16)?)?.is_none());
    let w_view = Tensor::new(values(40 * 70, 4), &dev)?
        .reshape((40, 70))?
        .t()?;
    assert!(small_matmul(&x, &w_view)?.is_none());
    Ok(())
}
