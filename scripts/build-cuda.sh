#!/usr/bin/env bash
# Builds the CUDA variant of the Node addon (sm_90: H100/H200) on a machine without a GPU or a
# system CUDA toolkit. The CUDA 13.0 compiler, headers and libraries come from NVIDIA's wheels
# on the Python package index; the GPU machines run a CUDA 13.0 driver, and PTX from a newer
# nvcc would not load there, so every wheel is pinned to 13.0.
#
# Output: npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node (stripped).
# Usage: scripts/build-cuda.sh            (CUDA_DIR defaults to .cuda/, the build to target/cuda/)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUDA_DIR=${PALIGEMMA_CUDA_DIR:-$ROOT/.cuda}
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)

if [ ! -f "$CUDA_DIR/unpacked/nvidia/cu13/bin/nvcc" ]; then
  mkdir -p "$CUDA_DIR/wheels" "$CUDA_DIR/unpacked"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CUDA_DIR/wheels" "${WHEELS[@]}"
  for w in "$CUDA_DIR"/wheels/*.whl; do python3 -m zipfile -e "$w" "$CUDA_DIR/unpacked/"; done
  chmod +x "$CUDA_DIR"/unpacked/nvidia/cu13/bin/* "$CUDA_DIR"/unpacked/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi

export CUDA_HOME="$CUDA_DIR/unpacked/nvidia/cu13"
LIB="$CUDA_HOME/lib"
# The wheels ship only versioned sonames; the linker needs the plain names.
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10; do
  ln -sf "$so" "$LIB/${so%%.so.*}.so"
done
[ -e "$CUDA_HOME/lib64" ] || ln -s lib "$CUDA_HOME/lib64"

# No driver here: link against a stub libcuda.so.1 that defines every driver entry point
# cudarc declares. The GPU machine's real libcuda.so.1 replaces it at load time.
STUB="$LIB/stubs"
if [ ! -f "$STUB/libcuda.so" ]; then
  mkdir -p "$STUB"
  CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
  grep -o 'fn cu[A-Za-z0-9_]*' "$CUDARC/src/driver/sys/mod.rs" | sort -u | sed 's/^fn \(.*\)/int \1(void) { return 999; }/' > "$STUB/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/cuda_stub.c"
fi

export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$LIB:$STUB${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$ROOT/target/cuda"
nvcc --version | tail -2

OUT="$ROOT/npm/linux-x64-gnu-cuda"
cd "$ROOT"
npx napi build --platform --release --features cuda \
  --manifest-path crates/paligemma-node/Cargo.toml --package-json-path package.json \
  --output-dir "$OUT" --no-js --no-dts-header --dts "$CARGO_TARGET_DIR/ignored.d.ts"
NODE_FILE="$OUT/paligemma.linux-x64-gnu.node"
mv -f "$NODE_FILE" "$OUT/paligemma.linux-x64-gnu-cuda.node"
strip --strip-unneeded "$OUT/paligemma.linux-x64-gnu-cuda.node"
ls -la "$OUT"/*.node
readelf -d "$OUT/paligemma.linux-x64-gnu-cuda.node" | grep NEEDED
