//! The panel kernel against a float64 reference, across instruction sets bit for bit, and its
//! row-count invariance, which continuous batching relies on.

use super::*;

use crate::cpu::test_values as values;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `(k, n)`: inputs around the 256-input block and odd, outputs around the 16-wide panel and a
/// task's panels, including a partial last panel.
const SHAPES: [(usize, usize); 8] = [(1, 1), (7, 3), (31, 17), (256, 16), (257, 33), (300, 200), (513, 130), (2048, 48)];

#[test]
fn matches_a_float64_reference_across_shapes() {
    for (k, n) in SHAPES {
        let wt = values(k * n, (n * 17 + k) as u32);
        let w = pack(&wt, k, n);
        for m in [1, 2, 3, 5, 8, 9, 16, 17, 40] {
            let x = values(m * k, (m * 131 + k) as u32);
            let y = matmul(&x, m, &w, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| x[i * k + c] as f64 * wt[c * n + j] as f64).sum();
                    let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                    let got = y[i * n + j] as f64;
                    assert!((got - want).abs() <= tol, "m={m} k={k} n={n} at ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn every_instruction_set_gives_the_scalar_chains_bits() {
    let sets = Isa::available();
    for (k, n) in SHAPES {
        let w = pack(&values(k * n, (n * 5 + k) as u32), k, n);
        for m in [1, 2, 4, 6, 7, 8, 11, 16, 23] {
            let x = values(m * k, (m * 7 + k) as u32);
            let want = bits(&matmul_scalar(&x, m, &w, k, n));
            for &isa in &sets {
                assert_eq!(bits(&matmul_on(isa, &x, m, &w, k, n)), want, "{isa:?}: m={m} k={k} n={n}");
            }
        }
    }
}

/// A row's outputs are the same bits alone or among any number of other rows, a prompt's many
/// rows (sliced at MAX_SLICE_ROWS) included.
#[test]
fn each_row_is_bitwise_the_same_whatever_the_row_count() {
    for (k, n) in [(300usize, 200usize), (64, 16), (2048, 40)] {
        let w = pack(&values(k * n, (k + n) as u32), k, n);
        let m_max = MAX_SLICE_ROWS + 3;
        let x = values(m_max * k, (n * 3 + k) as u32);
        let alone: Vec<Vec<u32>> = (0..20).map(|i| bits(&matmul(&x[i * k..(i + 1) * k], 1, &w, k, n))).collect();
        for m in (2..=20).chain([m_max]) {
            let y = matmul(&x[..m * k], m, &w, k, n);
            for (i, row) in alone.iter().enumerate().take(m) {
                assert_eq!(&bits(&y[i * n..(i + 1) * n]), row, "k={k} n={n}: row {i} of {m}");
            }
        }
        // The last rows of the big batch sit in the second slice: compare them alone too.
        let y = matmul(&x, m_max, &w, k, n);
        for i in m_max - 3..m_max {
            assert_eq!(bits(&y[i * n..(i + 1) * n]), bits(&matmul(&x[i * k..(i + 1) * k], 1, &w, k, n)), "row {i}");
        }
    }
}

#[test]
fn the_tensor_entry_point_agrees_with_candle_and_refuses_mismatches() -> crate::error::Result<()> {
    let dev = Device::Cpu;
    let (m, k, n) = (3, 40, 70);
    let wt = Tensor::new(values(k * n, 2), &dev)?.reshape((k, n))?;
    let w = pack(&wt.flatten_all()?.to_vec1::<f32>()?, k, n);
    // A strided x (a transposed view) is made contiguous first.
    let x = Tensor::new(values(k * m, 3), &dev)?.reshape((k, m))?.t()?;
    let ours = matmul_tensor(&x, &w, k, n)?;
    let diff = (ours - x.matmul(&wt)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "{diff}");
    assert!(matmul_tensor(&x.to_dtype(DType::F16)?, &w, k, n).is_err());
    assert!(matmul_tensor(&x, &w[1..], k, n).is_err());
    assert!(matmul_tensor(&Tensor::zeros((2, k + 1), DType::F32, &dev)?, &w, k, n).is_err());
    Ok(())
}
