#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on the GPU machine (which has no Rust): the engine's
# check/bench binary for CUDA sm_90, stripped and xz-compressed into .device/ (the embedded PTX
# compresses ~8x, which keeps the transfer under the device tool's 64 MiB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/cuda-env.sh"
cd "$ROOT"
cargo build --release -p paligemma --features cuda --example engine_bench
mkdir -p .device
strip -o .device/engine_bench "$CARGO_TARGET_DIR/release/examples/engine_bench"
xz -T2 -6 -f .device/engine_bench
# The crate's unit tests with the cuda feature: the fused kernels against host loops (src/cuda/tests.rs).
TESTS=$(cargo test --release -p paligemma --features cuda --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]][-1])')
strip -o .device/kernel_tests "$TESTS"
xz -T2 -6 -f .device/kernel_tests
ls -la .device/
