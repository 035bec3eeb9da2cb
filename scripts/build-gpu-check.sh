#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on the GPU machine (which has no Rust): the engine's
# check/bench binary for CUDA sm_90, stripped and xz-compressed into .device/ (the embedded PTX
# compresses ~8x, which keeps the transfer under the device tool's 64 MiB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/cuda-env.sh"
cd "$ROOT"
# --target matches what `napi build` passes, so the addon and this binary share artifacts.
cargo build --release -p paligemma --features cuda --example engine_bench --target x86_64-unknown-linux-gnu
mkdir -p .device
strip -o .device/engine_bench "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/examples/engine_bench"
xz -T2 -6 -f .device/engine_bench
ls -la .device/
