#!/usr/bin/env bash
# Installs the benchmark peers (never needed by the tests):
#  - benches/.venv: PyTorch + transformers (the versions the reference fixtures were made with);
#  - the candle-transformers peer is built by `cargo build --release --manifest-path benches/candle-peer/Cargo.toml`.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==2.11.*" "transformers==5.17.*" safetensors pillow numpy
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
