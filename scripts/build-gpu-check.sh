#!/usr/bin/env bash
# Builds everything scripts/gpu-check.sh runs on the GPU machine (which has no Rust and no
# Node.js) into one archive, .device/payload.tar.xz:
#   engine_bench         the engine's check/bench binary, CUDA sm_90;
#   kernel_tests         the crate's unit tests with the cuda feature (src/cuda/tests.rs);
#   paligemma-cuda.node  the CUDA Node addon (scripts/build-cuda.sh);
#   node                 this machine's node binary (Node's official Linux build links only
#                        glibc, which the GPU machine's newer Ubuntu has).
# and dist/ (npm run build:ts). A device call carries `.device` and `dist`.
#
# The three Rust binaries embed the same PTX (candle's kernels and ours, ~8x compressible).
# One xz stream whose dictionary spans the whole archive stores it once: that is what fits the
# whole check, the Node addon included, into one call under the device tool's 64 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/cuda-env.sh"
cd "$ROOT"
cargo build --release -p paligemma --features cuda --example engine_bench
TESTS=$(cargo test --release -p paligemma --features cuda --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]][-1])')
bash scripts/build-cuda.sh
npm run build:ts

STAGE="$CARGO_TARGET_DIR/device-stage"
rm -rf "$STAGE" && mkdir -p "$STAGE"
strip -o "$STAGE/engine_bench" "$CARGO_TARGET_DIR/release/examples/engine_bench"
strip -o "$STAGE/kernel_tests" "$TESTS"
strip -o "$STAGE/node" "$(command -v node)"
# Moved, not copied: an addon left in npm/linux-x64-gnu-cuda/ would be picked up by local test
# runs, which would then fall back from it with a warning.
mv -f npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node "$STAGE/paligemma-cuda.node"
ls -la "$STAGE"

rm -rf .device && mkdir -p .device
stage_mib=$(( $(du -cb "$STAGE" | tail -1 | cut -f1) / 1048576 + 1 ))
# Single-threaded: xz's threads split the input into blocks, and a block cannot refer back into
# another, so the shared PTX would be stored three times.
tar -C "$STAGE" -cf - node engine_bench kernel_tests paligemma-cuda.node \
  | xz -T1 --lzma2=preset=9,dict=${stage_mib}MiB > .device/payload.tar.xz
ls -la .device/

tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -cb .device dist | tail -1 | cut -f1)
echo "working tree $((tree_bytes / 1048576)) MiB + carried $((carried / 1048576)) MiB (the device tool takes 64 MiB)"
[ $((tree_bytes + carried)) -lt $((64 * 1048576)) ] || { echo "too large for one device call"; exit 1; }
