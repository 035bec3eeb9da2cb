//! candle 0.11.1 CPU matmul throughput at PaliGemma's real shapes, per weight format: what each
//! option for the engine could reach (f32 gemm, f16 gemm, Q8_0 / Q4_K `QMatMul`, and whether
//! bf16 works at all). Prints one JSON line per (shape, format).
//!
//! Usage: kernels [--reps 5] [--only prefill|decode]
//! Build with `--features avx512` to turn on gemm's AVX-512 kernels (`gemm/x86-v4`, chosen at
//! run time) and compare.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut() -> AnyResult<Tensor>>(reps: usize, mut f: F) -> AnyResult<f64> {
    f()?; // warm-up (packing buffers, page faults)
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let y = f()?;
        // Force completion (CPU ops are synchronous, but keep the result alive until here).
        std::hint::black_box(&y);
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = flag("--reps").map_or(Ok(5), |s| s.parse())?;
    let only = flag("--only");
    let dev = Device::Cpu;
    // (phase, name, m, k, n): y[m, n] = x[m, k] · W[n, k]ᵀ, as in a Linear layer.
    let shapes = [
        ("prefill", "siglip fc1 (256×1152 · 1152×4304)", 256, 1152, 4304),
        ("prefill", "gemma gate/up (266×2048 · 2048×16384)", 266, 2048, 16384),
        ("prefill", "gemma down (266×16384 · 16384×2048)", 266, 16384, 2048),
        ("decode", "gemma gate/up (1×2048 · 2048×16384)", 1, 2048, 16384),
        ("decode", "gemma down (1×16384 · 16384×2048)", 1, 16384, 2048),
        ("decode", "lm head (1×2048 · 2048×257216)", 1, 2048, 257216),
    ];
    let avx512 = cfg!(feature = "avx512");
    for (phase, name, m, k, n) in shapes {
        if only.as_deref().is_some_and(|o| o != phase) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev)?;
        let w = (Tensor::randn(0f32, 0.02, (n, k), &dev)?).contiguous()?;
        let flops = 2.0 * (m * k * n) as f64;
        let report = |format: &str, bytes: f64, secs: AnyResult<f64>| match secs {
            Ok(s) => println!(
                "{{\"phase\":\"{phase}\",\"shape\":\"{name}\",\"format\":\"{format}\",\"avx512\":{avx512},\"ms\":{:.3},\"gflop_s\":{:.1},\"weight_gb_s\":{:.2}}}",
                s * 1e3,
                flops / s / 1e9,
                bytes / s / 1e9
            ),
            Err(e) => println!(
                "{{\"phase\":\"{phase}\",\"shape\":\"{name}\",\"format\":\"{format}\",\"avx512\":{avx512},\"error\":{}}}",
                serde_json::to_string(&e.to_string()).unwrap()
            ),
        };
        let numel = (n * k) as f64;
        // f32: what the engine does today (Linear: x · Wᵀ through a broadcast matmul).
        let wt = w.t()?;
        report("f32", numel * 4.0, time(reps, || Ok(x.broadcast_matmul(&wt)?)));
        // f16 weights and activations (gemm converts to f32 inside on x86).
        let (x16, w16) = (x.to_dtype(DType::F16)?, w.to_dtype(DType::F16)?);
        let w16t = w16.t()?;
        report("f16", numel * 2.0, time(reps, || Ok(x16.broadcast_matmul(&w16t)?)));
        // bf16: unsupported by candle's CPU matmul (reported as an error line).
        let (xb, wb) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
        let wbt = wb.t()?;
        report("bf16", numel * 2.0, time(1, || Ok(xb.broadcast_matmul(&wbt)?)));
        drop((x16, w16, w16t, xb, wb, wbt));
        // Quantized weights, f32 activations.
        for (label, q, bits) in [("q8_0", GgmlDType::Q8_0, 8.5), ("q4_k", GgmlDType::Q4K, 4.5)] {
            // Q4_K needs k divisible by 256 (SigLIP's 1152 is not): reported as an error line.
            match QTensor::quantize(&w, q).and_then(QMatMul::from_qtensor) {
                Ok(mm) => report(label, numel * bits / 8.0, time(reps, || Ok(mm.forward(&x)?))),
                Err(e) => report(label, 0.0, Err(e.into())),
            }
        }
    }
    Ok(())
}
