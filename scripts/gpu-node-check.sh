#!/usr/bin/env bash
# The Node package on the GPU machine (scripts/gpu-node-check.mjs): the CUDA addon through the
# public API, with the node binary carried from the build machine. scripts/gpu-check.sh runs it
# after its benchmarks, with the payload it unpacked in DEVICE_DIR and the real-size
# checkpoints it wrote in CKPT_DIR (which this then also times through the API); its JSON lines
# go to RESULTS. It also runs on its own, after scripts/gpu-check.sh has unpacked the payload.
# A dry run here: DEV=cpu NODE=node DEVICE_DIR=<unpacked payload> bash scripts/gpu-node-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-node-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-node-check.log") 2>&1
DEVICE_DIR=${DEVICE_DIR:-/tmp/pg-device}
NODE=${NODE:-$DEVICE_DIR/node}
command -v "$NODE" >/dev/null || { echo "no node binary at $NODE (the payload of scripts/build-gpu-check.sh)"; exit 1; }
# Where the package looks for its CUDA variant in a checkout (src/native.ts).
ADDON=npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node
cp -f "$DEVICE_DIR/paligemma-cuda.node" "$ADDON" || { echo "no CUDA addon in $DEVICE_DIR"; exit 1; }
[ -f dist/index.js ] || { echo "no dist/: run npm run build:ts and carry dist"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "node $("$NODE" --version); addon $(ldd "$ADDON" | grep -E 'libcuda|libcublas\.' | tr -s ' \t' ' ' | tr '\n' ';')"
[ -n "${RESULTS:-}" ] || { RESULTS=$OUT/node-results.jsonl; : > "$RESULTS"; }
"$NODE" scripts/gpu-node-check.mjs "${DEV:-cuda}" "$RESULTS"
status=$?
# The copy would otherwise stay in the checkout for the next local test run to trip over.
rm -f "$ADDON"
exit $status
