#!/usr/bin/env bash
# One-shot caption, wall time from process start (issue 27): `paligemma caption` of 32 tokens on
# PaliGemma-3B-224 (real size, random weights) from the Hugging Face folder and from a prepared
# folder, against transformers doing the same in a fresh Python process (import included).
# Page cache warm (one warm-up run each); 2 threads each. Needs hyperfine (Debian's) and
# benches/.venv (benches/setup.sh).
#
#   bash benches/one-shot.sh [runs]        # default 3; prints hyperfine's table, writes JSON
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SRC=benches/.cache/pg1-3b-224-serve          # the f32 checkpoint with PaliGemma's tokenizer
PREPARED=benches/.cache/pg1-3b-224-prepared
OUT=benches/.cache/results/one-shot-$(date -u +%Y-%m-%dT%H-%M-%SZ).json
[ -d "$SRC" ] || { echo "no $SRC: run a benchmark once (npm run bench:serve makes it)"; exit 1; }
[ -d "$PREPARED" ] || node dist/src/cli.js quantize "$SRC" "$PREPARED"
mkdir -p "$(dirname "$OUT")"
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 OMP_NUM_THREADS=2
IMAGE=testdata/e2e-caption/image.png
hyperfine --runs "$RUNS" --warmup 1 --export-json "$OUT" \
  -n "paligemma prepared f32" "node dist/src/cli.js caption --model $PREPARED --image $IMAGE -n 32 --threads 2" \
  -n "paligemma f32" "node dist/src/cli.js caption --model $SRC --image $IMAGE -n 32 --threads 2" \
  -n "transformers f32" "benches/.venv/bin/python benches/peers/transformers_peer.py --model $SRC --threads 2 --new-tokens 32 --runs 1 --warmup 0 --single-pass"
echo "wrote $OUT"
