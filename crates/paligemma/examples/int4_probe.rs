//! One decoded row (or `ROWS`, a continuous batch's step) through PaliGemma-3B's decoder matrices and LM head in `q4k` (the
//! int4 panel kernel, `cpu::int4_panels`) and in `q8_0` (`cpu::int8_panels`), from inside the
//! rayon pool as the engine calls them: µs per product and the weights' read rate. The matrices
//! up to `[2560, 2048]` stay in cache between runs; the gate‖up block and the LM head stream
//! from memory, as in a decode step. The machine's bandwidth drifts, so compare the two kernels
//! within one run.
//!
//!   RAYON_NUM_THREADS=2 cargo run --release --example int4_probe
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use paligemma::cpu::int4_panels::Int4Panels;
use paligemma::cpu::int8_panels::Int8Panels;
use std::time::Instant;

fn main() {
    rayon::ThreadPoolBuilder::new().build().expect("a rayon pool").install(run);
}

fn run() {
    let m: usize = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for (n, k, runs) in [(2560usize, 2048usize, 400), (2048, 2048, 400), (32768, 2048, 40), (2048, 16384, 40), (257_152, 2048, 6)] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let q4k = Int4Panels::from_q4k(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap().data().unwrap(), n, k).unwrap();
        let q8 = Int8Panels::from_q8_0(&QTensor::quantize(&w, GgmlDType::Q8_0).unwrap().data().unwrap(), n, k).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let int4 = time(runs, || drop(q4k.matmul(&x, m)));
        let int8 = time(runs, || drop(q8.matmul(&x, m)));
        let rate = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        let gops = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!(
            "[{n}, {k}] × {m} rows: q4k {:.1} µs ({:.1} GB/s, {:.0} GOP/s), q8_0 {:.1} µs ({:.1} GB/s, {:.0} GOP/s), q4k ÷ q8_0 {:.2}",
            int4 * 1e6,
            rate(q4k.bytes(), int4),
            gops(int4),
            int8 * 1e6,
            rate(q8.bytes(), int8),
            gops(int8),
            int4 / int8
        );
    }
}

/// Mean seconds of `runs` runs after a warm-up.
fn time(runs: usize, f: impl Fn()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let t = Instant::now();
    for _ in 0..runs {
        f();
    }
    t.elapsed().as_secs_f64() / runs as f64
}
