#!/usr/bin/env bash
# Builds the CUDA variant of the Node addon (sm_90: H100/H200) on a machine without a GPU or a
# system CUDA toolkit. The CUDA 13.0 compiler, headers and libraries come from NVIDIA's wheels
# on the Python package index; the GPU machines run a CUDA 13.0 driver, and PTX from a newer
# nvcc would not load there, so every wheel is pinned to 13.0.
#
# Output: npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node (stripped).
# Usage: scripts/build-cuda.sh            (CUDA_DIR defaults to .cuda/, the build to target/cuda/)
#        CUDA_COMPUTE_CAP=89 scripts/build-cuda.sh   (another GPU generation: the kernels run on
#        that compute capability and newer; the engine refuses an older GPU by name at load)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/cuda-env.sh"

OUT="$ROOT/npm/linux-x64-gnu-cuda"
cd "$ROOT"
npx napi build --platform --release --features cuda \
  --manifest-path crates/paligemma-node/Cargo.toml --package-json-path package.json \
  --output-dir "$OUT" --no-js --no-dts-header --dts ../../target/napi/paligemma-cuda.d.ts  # relative to --output-dir
NODE_FILE="$OUT/paligemma.linux-x64-gnu.node"
mv -f "$NODE_FILE" "$OUT/paligemma.linux-x64-gnu-cuda.node"
strip --strip-unneeded "$OUT/paligemma.linux-x64-gnu-cuda.node"
ls -la "$OUT"/*.node
readelf -d "$OUT/paligemma.linux-x64-gnu-cuda.node" | grep NEEDED
