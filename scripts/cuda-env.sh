# Sourced by the CUDA build scripts: fetches NVIDIA's CUDA 13.0 wheels from the Python package
# index into .cuda/ (once), lays them out as a toolkit, and exports the build environment.
# Expects ROOT to be set to the repository root.
CUDA_DIR=${PALIGEMMA_CUDA_DIR:-$ROOT/.cuda}
# Pinned to 13.0: the GPU machines run a CUDA 13.0 driver, and PTX from a newer nvcc fails there.
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
  CUDARC=$(cargo fetch --manifest-path "$ROOT/Cargo.toml" -q; ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
  grep -o 'fn cu[A-Za-z0-9_]*' "$CUDARC/src/driver/sys/mod.rs" | sort -u | sed 's/^fn \(.*\)/int \1(void) { return 999; }/' > "$STUB/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/cuda_stub.c"
fi

export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}  # H100/H200; the GPU check and the npm package are built for these
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$LIB:$STUB${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$ROOT/target/cuda"
nvcc --version | tail -2

