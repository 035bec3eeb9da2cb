//! Rows through the panel kernel (`cpu::panels`) on PaliGemma-3B's decoder shapes, beside
//! candle's matmul (gemm) on the same `[in, out]` operands and the bf16 panel kernel
//! (`cpu::bf16_panels`, AVX512-BF16 only): the cost of a continuous batch's decode step per
//! matrix as the row count grows, and of a prompt (262 rows). Prints ms per product, GFLOP/s,
//! the weights' read rate, and the time relative to one row.
//!
//!   RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 cargo run --release --example rows_bench
//!   ROWS=1,16 PALIGEMMA_NO_AVX512=1 cargo run --release --example rows_bench   # AVX2 kernels
use candle_core::{Device, Tensor};
use paligemma::cpu::bf16_panels::{self, Bf16Panels};
use paligemma::cpu::panels;
use std::time::Instant;

fn main() {
    let rows: Vec<usize> = match std::env::var("ROWS") {
        Ok(list) => list.split(',').map(|v| v.trim().parse().expect("ROWS: a comma-separated list of row counts")).collect(),
        Err(_) => vec![1, 2, 4, 8, 16, 262],
    };
    println!("kernels: {:?}", panels::Isa::detect());
    // [in, out]: qkv, o, gate|up, down, and the tied LM head.
    for (k, n) in [(2048usize, 2560usize), (2048, 2048), (2048, 32768), (16384, 2048), (2048, 257_152)] {
        let wt = Tensor::randn(0f32, 0.05, (k, n), &Device::Cpu).unwrap();
        let packed = panels::pack(&wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(), k, n);
        let bf16 = Bf16Panels::from_rows(&wt.t().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k).unwrap();
        let mut one = f64::NAN;
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = time(|| drop(panels::matmul(&xs, m, &packed, k, n)));
            // gemm is far slower on the LM head's many columns at 2–16 rows; one run of it there.
            let gemm = if n > 100_000 && m > 1 && m < 262 { f64::NAN } else { time(|| drop(x.matmul(&wt).unwrap())) };
            if m == 1 {
                one = ours;
            }
            let gflops = 2.0 * (m * k * n) as f64 / ours / 1e6;
            let gbs = (k * n * 4) as f64 / ours / 1e6;
            let half = if bf16_panels::available() { time(|| drop(bf16.matmul(&xs, m))) } else { f64::NAN };
            println!(
                "[{k}, {n}] m={m}: {ours:.2} ms ({gflops:.0} GFLOP/s, {gbs:.1} GB/s, {:.2}x one row); gemm {gemm:.2} ms; bf16 {half:.2} ms ({:.0} GFLOP/s, {:.1} GB/s)",
                ours / one,
                gflops * ours / half,
                bf16.bytes() as f64 / half / 1e6
            );
        }
    }
}

/// Mean ms of a few runs after a warm-up.
fn time(f: impl Fn()) -> f64 {
    f();
    let runs = 5;
    let t = Instant::now();
    for _ in 0..runs {
        f();
    }
    t.elapsed().as_secs_f64() / runs as f64 * 1e3
}
