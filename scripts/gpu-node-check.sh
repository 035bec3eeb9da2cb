#!/usr/bin/env bash
# The Node package on the GPU machine (scripts/gpu-node-check.mjs): the CUDA addon through the
# public API, with the node binary carried from the build machine. Needs .device-node/ and dist/
# from scripts/build-gpu-node-check.sh. Run it right after scripts/gpu-check.sh, while the
# machine is warm: it then also times the real-size checkpoint that call left in CKPT_DIR.
# A dry run here: DEV=cpu NODE=node bash scripts/gpu-node-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-node-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-node-check.log") 2>&1
NODE=${NODE:-/tmp/node}
if ! command -v "$NODE" >/dev/null; then
  xz -dc .device-node/node.xz > "$NODE" && chmod +x "$NODE" || { echo "no node build in .device-node/"; exit 1; }
fi
ADDON=npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node
if [ ! -f "$ADDON" ]; then
  xz -dc .device-node/paligemma-cuda.node.xz > "$ADDON" || { echo "no CUDA addon in .device-node/"; exit 1; }
fi
[ -f dist/index.js ] || { echo "no dist/: run npm run build:ts and carry dist"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "node $("$NODE" --version); addon $(ldd "$ADDON" | grep -E 'libcuda|libcublas\.' | tr -s ' \t' ' ' | tr '\n' ';')"
: > "$OUT/node-results.jsonl"
"$NODE" scripts/gpu-node-check.mjs "${DEV:-cuda}" "$OUT/node-results.jsonl"
