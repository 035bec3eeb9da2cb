#!/usr/bin/env bash
# Builds what scripts/gpu-node-check.sh runs on the GPU machine, which has no Node.js and no
# Rust: the CUDA addon (scripts/build-cuda.sh) and this machine's node binary, stripped and
# xz-compressed into .device-node/, plus dist/ (npm run build:ts). A device call carries
# `.device-node` and `dist`; with the working tree that stays under the tool's 64 MiB, which is
# why this is a call of its own beside scripts/gpu-check.sh (.device/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/build-cuda.sh
npm run build:ts
mkdir -p .device-node
xz -T2 -6 -c npm/linux-x64-gnu-cuda/paligemma.linux-x64-gnu-cuda.node > .device-node/paligemma-cuda.node.xz
# Node's official Linux build links only glibc, which the GPU machine's Ubuntu has (newer).
strip -o .device-node/node "$(command -v node)"
xz -T2 -9 -f .device-node/node
ls -la .device-node/
tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -cb .device-node dist | tail -1 | cut -f1)
echo "working tree $((tree_bytes / 1048576)) MiB + carried $((carried / 1048576)) MiB (the device tool takes 64 MiB)"
[ $((tree_bytes + carried)) -lt $((64 * 1048576)) ] || { echo "too large for one device call"; exit 1; }
