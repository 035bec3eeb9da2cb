//! Rows through a q8_0 matrix: candle's kernel against `cpu::q8_0` (few rows: one pass over the
//! weights; from `MIN_ROWS` on: dequantize a band, then gemm), on PaliGemma-3B's decoder shapes.
//! On CPUs where candle repacks q8_0 (VNNI), both columns are candle's.
//!
//!   RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 cargo run --release --example q8_0_bench
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
fn main() {
    for (n, k) in [(2048usize, 2048usize), (32768, 2048), (2048, 16384), (257152, 2048)] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let qm = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        for m in [1usize, 4, 8, 32, 56, 266] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let time = |f: &dyn Fn() -> Tensor| {
                f();
                let t = Instant::now();
                for _ in 0..3 {
                    f();
                }
                t.elapsed().as_secs_f64() / 3.0 * 1e3
            };
            let candle = time(&|| qm.forward(&x).unwrap());
            let ours = time(&|| paligemma::cpu::q8_0::matmul(&qm, &x).unwrap().unwrap_or_else(|| qm.forward(&x).unwrap()));
            println!("[{n}, {k}] m={m}: candle {candle:.1} ms, ours {ours:.1} ms ({:.2}x)", candle / ours);
        }
    }
}
