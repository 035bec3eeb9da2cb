//! Rows through a q8_0 matrix on PaliGemma-3B's decoder shapes: candle's kernel, `cpu::q8_0`
//! (few rows: one pass over the weights; from `MIN_ROWS` on: dequantize a band, then gemm; on
//! CPUs where candle repacks q8_0, that is, with VNNI, this column is candle's too), and the int8
//! panel kernel (`cpu::int8_panels`, AVX-512 VNNI only), and the same weights in q4k through the
//! int4 panel kernel (`cpu::int4_panels`). Prints ms per product, int8 GOP/s and the weights' read
//! rate.
//!
//!   RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 cargo run --release --example q8_0_bench
//!   ROWS=1,16 SHAPES=32768x2048 cargo run --release --example q8_0_bench
//!   KERNELS=int8 ROWS=1,8,16 cargo run --release --example q8_0_bench   (only some columns)
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use paligemma::cpu::int4_panels::Int4Panels;
use paligemma::cpu::int8_panels::{self, Int8Panels};
use std::time::Instant;

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_string()).collect()
}

fn main() {
    let rows: Vec<usize> = list("ROWS", "1,4,8,16,32,266").iter().map(|v| v.parse().expect("ROWS: row counts")).collect();
    let shapes: Vec<(usize, usize)> = list("SHAPES", "2560x2048,2048x2048,32768x2048,2048x16384,257152x2048")
        .iter()
        .map(|s| {
            let (n, k) = s.split_once('x').expect("SHAPES: NxK,…");
            (n.parse().expect("N"), k.parse().expect("K"))
        })
        .collect();
    println!("int8 panels: {}", if int8_panels::available() { "AVX-512 VNNI" } else { "not on this CPU (portable path, slow)" });
    let kernels = list("KERNELS", "candle,q8_0,int8,int4");
    let wants = |name: &str| kernels.iter().any(|k| k == name);
    for (n, k) in shapes {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let panels = Int8Panels::from_q8_0(&qt.data().unwrap(), n, k).unwrap();
        let qm = QMatMul::from_qtensor(qt).unwrap();
        let q4k = wants("int4").then(|| Int4Panels::from_q4k(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap().data().unwrap(), n, k).unwrap());
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let time_if = |name: &str, f: &dyn Fn()| if wants(name) { time(f) } else { f64::NAN };
            let candle = time_if("candle", &|| drop(qm.forward(&x).unwrap()));
            let ours = time_if("q8_0", &|| drop(paligemma::cpu::q8_0::matmul(&qm, &x).unwrap().unwrap_or_else(|| qm.forward(&x).unwrap())));
            let int8 = time_if("int8", &|| drop(panels.matmul(&xs, m)));
            let int4 = q4k.as_ref().map_or(f64::NAN, |q4k| time(&|| drop(q4k.matmul(&xs, m))));
            let gops = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
            println!(
                "[{n}, {k}] m={m}: candle {candle:.2} ms ({:.0} GOP/s), cpu::q8_0 {ours:.2} ms, int8 panels {int8:.2} ms ({:.0} GOP/s, {:.1} GB/s; {:.2}x candle), q4k int4 panels {int4:.2} ms ({:.0} GOP/s, {:.1} GB/s)",
                gops(candle),
                gops(int8),
                panels.bytes() as f64 / int8 / 1e6,
                candle / int8,
                gops(int4),
                q4k.as_ref().map_or(0, Int4Panels::bytes) as f64 / int4 / 1e6
            );
        }
    }
}

/// The fastest of `RUNS` runs (default 5) after a warm-up, in ms: on a shared host the
/// minimum is the figure that repeats from one run of the bench to the next.
fn time(f: &dyn Fn()) -> f64 {
    f();
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}
