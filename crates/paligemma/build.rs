//! With the `cuda` feature, compiles the fused kernels (`src/cuda/fused.cu`) to PTX for
//! `CUDA_COMPUTE_CAP` (default 90: H100/H200) with the toolkit's nvcc, the same way candle
//! builds its own kernels. `scripts/cuda-env.sh` provides a toolkit on machines without one.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/cuda/fused.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    // The device check refuses GPUs older than the kernels' target (crate::device).
    println!("cargo:rustc-env=PALIGEMMA_CUDA_COMPUTE_CAP={cap}");
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|home| PathBuf::from(home).join("bin/nvcc")).filter(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "src/cuda/fused.cu", "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) compiling src/cuda/fused.cu", nvcc.display()),
        Err(e) => panic!("cannot run {} ({e}): the cuda feature needs the CUDA toolkit (scripts/cuda-env.sh fetches one)", nvcc.display()),
    }
}
