//! Rows through the f32 few-row kernels (`cpu::matvec`), on PaliGemma-3B's decoder shapes: the
//! cost of a continuous batch's decode step per matrix as the row count grows. Prints ms per
//! product and the weights' read rate.
//!
//!   RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 cargo run --release --example rows_bench
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() {
    // [k, n] transposed (the CPU layout of dense projections): qkv, o, gate|up, down; then the
    // [n, k] tied LM head.
    let transposed = [(2048usize, 2560usize), (2048, 2048), (2048, 32768), (16384, 2048)];
    for (k, n) in transposed {
        let wt = Tensor::randn(0f32, 0.05, (k, n), &Device::Cpu).unwrap();
        report(&format!("Wt [{k}, {n}]"), k * n, |x| paligemma::cpu::matvec::small_matmul_t(x, &wt).unwrap().unwrap(), k);
        // candle's matmul (gemm, with its AVX-512 kernels where the CPU has them) on the same
        // operands: what the rows would cost without the batch-invariant kernel.
        report(&format!("Wt [{k}, {n}] gemm"), k * n, |x| x.matmul(&wt).unwrap(), k);
    }
    let w = Tensor::randn(0f32, 0.05, (257_152, 2048), &Device::Cpu).unwrap();
    report("W [257152, 2048]", 257_152 * 2048, |x| paligemma::cpu::matvec::small_matmul(x, &w).unwrap().unwrap(), 2048);
    let wt = w.t().unwrap();
    report("W [257152, 2048] gemm", 257_152 * 2048, |x| x.matmul(&wt).unwrap(), 2048);
}

fn report(name: &str, elems: usize, product: impl Fn(&Tensor) -> Tensor, k: usize) {
    let mut one = 0.0;
    for m in [1usize, 2, 4, 8, 16] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        product(&x);
        let runs = 5;
        let t = Instant::now();
        for _ in 0..runs {
            product(&x);
        }
        let ms = t.elapsed().as_secs_f64() / runs as f64 * 1e3;
        if m == 1 {
            one = ms;
        }
        let gbs = elems as f64 * 4.0 / (ms / 1e3) / 1e9;
        println!("{name} m={m}: {ms:.2} ms ({gbs:.1} GB/s of weights, {:.2}x one row's time)", ms / one);
    }
}
