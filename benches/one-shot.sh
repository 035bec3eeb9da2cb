#!/usr/bin/env bash
# One-shot caption, wall time from process start (issue 27): `paligemma caption` of 32 tokens on
# PaliGemma-3B-224 (real size, random weights) from the Hugging Face folder and from prepared
# folders, in f32 and q8_0, against transformers doing the same in a fresh Python process
# (import included). Page cache warm (one warm-up run each); 2 threads each. Needs hyperfine
# (Debian's) and benches/.venv (benches/setup.sh).
#
#   bash benches/one-shot.sh [runs]              # default 3; prints hyperfine's table, writes JSON
#   DTYPES=q8_0 bash benches/one-shot.sh         # only the q8_0 rows (and transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SRC=benches/.cache/pg1-3b-224-serve          # the f32 checkpoint with PaliGemma's tokenizer
PREPARED=benches/.cache/pg1-3b-224-prepared
PREPARED_Q8=benches/.cache/pg1-3b-224-q8_0-prepared
DTYPES=${DTYPES:-f32 q8_0}
OUT=benches/.cache/results/one-shot-$(date -u +%Y-%m-%dT%H-%M-%SZ).json
[ -d "$SRC" ] || { echo "no $SRC: run a benchmark once (npm run bench:serve makes it)"; exit 1; }
[ -d "$PREPARED" ] || node dist/src/cli.js quantize "$SRC" "$PREPARED"
[ -d "$PREPARED_Q8" ] || node dist/src/cli.js quantize --dtype q8_0 "$SRC" "$PREPARED_Q8"
mkdir -p "$(dirname "$OUT")"
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 OMP_NUM_THREADS=2
IMAGE=testdata/e2e-caption/image.png
CAPTION="node dist/src/cli.js caption --image $IMAGE -n 32 --threads 2"
COMMANDS=()
for dtype in $DTYPES; do
  case $dtype in
    f32) COMMANDS+=(-n "paligemma prepared f32" "$CAPTION --model $PREPARED" -n "paligemma f32" "$CAPTION --model $SRC") ;;
    q8_0) COMMANDS+=(-n "paligemma prepared q8_0" "$CAPTION --model $PREPARED_Q8 --dtype q8_0" -n "paligemma q8_0" "$CAPTION --model $SRC --dtype q8_0") ;;
    *) echo "DTYPES: f32 and/or q8_0, got $dtype"; exit 2 ;;
  esac
done
hyperfine --runs "$RUNS" --warmup 1 --export-json "$OUT" "${COMMANDS[@]}" \
  -n "transformers f32" "benches/.venv/bin/python benches/peers/transformers_peer.py --model $SRC --threads 2 --new-tokens 32 --runs 1 --warmup 0 --single-pass"
echo "wrote $OUT"
