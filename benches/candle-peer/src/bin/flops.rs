//! Peak multiply-add throughput of this CPU: independent chains in registers, no memory
//! traffic, on 1 and 2 threads (or the counts given). f32 with the widest vectors the CPU has
//! (AVX-512 if present, else AVX2+FMA): the ceiling for any f32 matmul, and so for the time to
//! first token, which is matmul-bound. Where the CPU has them, also the int8 (AVX-512 VNNI
//! `vpdpbusd`, 64 multiply-adds per instruction) and bf16 (AVX-512 BF16 `vdpbf16ps`, 32) peaks,
//! the ceilings of the low-precision prompt kernels (issue 24); each multiply-add counts as two
//! operations. Prints one JSON line.
//!
//! Usage: flops [--threads 1,2] [--millis 400]

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    // 12 independent accumulators: enough to cover 4-cycle latency on two FMA ports.
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = 0.0;
    for r in acc {
        s += _mm512_reduce_add_ps(r);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let mut s = 0.0;
    for r in acc {
        _mm256_storeu_ps(lanes.as_mut_ptr(), r);
        s += lanes.iter().sum::<f32>();
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_epi32(1); 12];
    let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_dpbusd_epi32(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_epi32(r) as f32).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999), _mm512_set1_ps(0.999));
    let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_dpbf16_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

/// The low-precision peaks this CPU has: (name, operations per iteration, loop).
fn low_precision_kernels() -> Vec<(&'static str, f64, fn(u64) -> f32)> {
    let mut out: Vec<(&'static str, f64, fn(u64) -> f32)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the features were detected at run time.
            out.push(("int8", 12.0 * 64.0 * 2.0, |n| unsafe { int8_loop_avx512(n) }));
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the features were detected at run time.
            out.push(("bf16", 12.0 * 32.0 * 2.0, |n| unsafe { bf16_loop_avx512(n) }));
        }
    }
    out
}

/// FLOPs per iteration of the loop above and the loop itself, for the widest ISA available.
fn kernel() -> (&'static str, f64, fn(u64) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return ("avx512", 12.0 * 16.0 * 2.0, |n| unsafe { fma_loop_avx512(n) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return ("avx2", 12.0 * 8.0 * 2.0, |n| unsafe { fma_loop_avx2(n) });
        }
    }
    ("none", 0.0, |_| 0.0)
}

/// Best-of-3 throughput of `run` in G operations per second on each thread count, as JSON.
fn measure(threads: &[usize], millis: f64, ops_per_iter: f64, run: fn(u64) -> f32) -> String {
    // Calibrate the iteration count to about `millis` on one thread.
    let mut iters = 1_000_000u64;
    loop {
        let t = Instant::now();
        std::hint::black_box(run(iters));
        let s = t.elapsed().as_secs_f64();
        if s * 1e3 >= millis / 4.0 || ops_per_iter == 0.0 {
            iters = ((iters as f64) * millis / 1e3 / s.max(1e-9)) as u64;
            break;
        }
        iters *= 4;
    }
    let mut results = Vec::new();
    for &n in threads {
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..n {
                    s.spawn(|| std::hint::black_box(run(iters)));
                }
            });
            let gops = n as f64 * iters as f64 * ops_per_iter / t.elapsed().as_secs_f64() / 1e9;
            best = best.max(gops);
        }
        results.push(format!("{{\"threads\":{n},\"gflop_s\":{best:.1}}}"));
    }
    format!("[{}]", results.join(","))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let threads: Vec<usize> =
        flag("--threads").unwrap_or_else(|| "1,2".into()).split(',').map(|s| s.parse().expect("--threads")).collect();
    let millis: f64 = flag("--millis").map_or(400.0, |s| s.parse().expect("--millis"));
    let (isa, flops_per_iter, run) = kernel();
    let f32_results = measure(&threads, millis, flops_per_iter, run);
    let low: Vec<String> = low_precision_kernels()
        .into_iter()
        .map(|(name, ops, run)| format!("\"{name}\":{}", measure(&threads, millis, ops, run)))
        .collect();
    let low = if low.is_empty() { String::new() } else { format!(",{}", low.join(",")) };
    println!("{{\"check\":\"flops\",\"isa\":\"{isa}\",\"results\":{f32_results}{low}}}");
}
