//! A 16-row decode step's attention on PaliGemma-3B's shapes (8 query heads sharing one KV head
//! of 256, 300 positions of cache per row), over 18 layers whose caches do not fit in cache, as
//! in a real step: `cpu::attention::attend` with one query per sequence.
//!
//!   RAYON_NUM_THREADS=2 cargo run --release --example attn_probe
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let b: usize = std::env::var("B").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let (n, kv, s, h) = (8, 1, 300, 256);
    let q = Tensor::randn(0f32, 1.0, (b, n, 1, h), &dev).unwrap();
    let layers: Vec<(Tensor, Tensor)> = (0..18).map(|_| (Tensor::randn(0f32, 1.0, (b, kv, s, h), &dev).unwrap(), Tensor::randn(0f32, 1.0, (b, kv, s, h), &dev).unwrap())).collect();
    let mask = Tensor::zeros((b, 1, s), candle_core::DType::F32, &dev).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = Instant::now();
        for (k, v) in &layers {
            paligemma::cpu::attention::attend(&q, k, v, Some(&mask), None).unwrap().unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("18 layers × {b} rows, caches from memory: {best:.2} ms (fastest of 20)");
}
