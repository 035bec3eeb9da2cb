#!/usr/bin/env bash
# The whole GPU check in one call (the device tool lends 15 minutes per session):
#   1. fixture parity on CUDA: f32 to 1e-4, bf16 greedy ids equal to expected_bf16;
#   2. random real-size checkpoints (PaliGemma-3B-224, PaliGemma 2-3B-448), shared by both sides;
#   3. this engine vs transformers, bf16, batch 1 and 8: TTFT and decode ms/token;
#   4. a table on stdout, the full log and JSON lines under $OUT.
# Needs .device/engine_bench.xz, built here by scripts/build-gpu-check.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
exec > >(tee "$OUT/gpu-check.log") 2>&1
PY=${PY:-/opt/torch/.venv/bin/python3}
# Overridable for a CPU dry run: DEV=cpu DTYPE=f32 PARITY_DTYPES=f32 SKIP_CHECKPOINTS=1 ...
DEV=${DEV:-cuda}
DTYPE=${DTYPE:-bf16}
PARITY_DTYPES=${PARITY_DTYPES:-f32 bf16}
NEW_TOKENS=${NEW_TOKENS:-32}
RUNS=${RUNS:-3}
CKPT=${CKPT_DIR:-/tmp/pg-checkpoints}

BIN=${BIN:-/tmp/engine_bench}
if [ ! -x "$BIN" ]; then
  xz -dc .device/engine_bench.xz > "$BIN" && chmod +x "$BIN" || { echo "no engine_bench build in .device/"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== parity on $DEV"
# Each decode step mode that a CUDA session can use, each in its own process (a faulting
# kernel ends the process): fixed shapes kernel by kernel, and the same replayed as a graph.
for f in testdata/reference/*/; do
  for dt in $PARITY_DTYPES; do
    for mode in ${PARITY_MODES:-fixed graph}; do
      PALIGEMMA_STEP_MODE=$mode "$BIN" parity "$f" "$DEV" "$dt" | sed "s/^{/{\"step_mode\":\"$mode\",/" | tee -a "$RESULTS"
    done
  done
done

echo "== random checkpoints"
mkdir -p "$CKPT"
# Explicit PIDs: a bare `wait` would also wait for the tee behind `exec >(…)` and never return.
pids=()
if [ -z "${SKIP_CHECKPOINTS:-}" ]; then
  [ -f "$CKPT/pg1-3b-224/model.safetensors" ] || { "$BIN" random-checkpoint paligemma-3b-224 "$CKPT/pg1-3b-224" bf16 1 & pids+=($!); }
  [ -f "$CKPT/pg2-3b-448/model.safetensors" ] || { "$BIN" random-checkpoint paligemma2-3b-448 "$CKPT/pg2-3b-448" bf16 2 & pids+=($!); }
fi
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"

echo "== benchmarks ($DTYPE, $NEW_TOKENS new tokens, median of $RUNS)"
for m in ${MODELS:-pg1-3b-224 pg2-3b-448}; do
  for b in ${BATCHES:-1 8}; do
    # Each decode step mode in turn (StepMode: eager kernel by kernel, or one CUDA graph per step).
    for mode in ${STEP_MODES:-eager graph}; do
      PALIGEMMA_STEP_MODE=$mode timeout 150 "$BIN" bench "$CKPT/$m" "$DEV" "$DTYPE" "$b" "$NEW_TOKENS" "$RUNS" | tee -a "$RESULTS"
    done
    # A/B for the memory pool (device_memory.rs): the driver's default, which hands freed memory
    # back at every synchronisation, against the kept pool of the rows above.
    if [ -z "${SKIP_MEMPOOL_AB:-}" ] && [ "$b" = 1 ]; then
      for mode in ${STEP_MODES:-eager graph}; do
        PALIGEMMA_CUDA_MEMPOOL=release PALIGEMMA_STEP_MODE=$mode timeout 150 "$BIN" bench "$CKPT/$m" "$DEV" "$DTYPE" "$b" "$NEW_TOKENS" "$RUNS" | tee -a "$RESULTS"
      done
    fi
    # Sampled decoding (temperature 1, top-p 0.9: the logits go to the host sampler every token).
    if [ -z "${SKIP_SAMPLED:-}" ] && [ "$b" = 1 ]; then
      BENCH_TEMPERATURE=1 timeout 150 "$BIN" bench "$CKPT/$m" "$DEV" "$DTYPE" "$b" "$NEW_TOKENS" "$RUNS" | tee -a "$RESULTS"
    fi
    [ -n "${SKIP_PEER:-}" ] || timeout 150 "$PY" benches/peers/transformers_peer.py --model "$CKPT/$m" --device "$DEV" \
      --dtype "$DTYPE" --batch "$b" --new-tokens "$NEW_TOKENS" --runs "$RUNS" --warmup "${PEER_WARMUP:-2}" 2>>"$OUT/peer-stderr.log" | tee -a "$RESULTS"
    # The issue's other anchor: static cache + torch.compile (transformers compiles the decode
    # forward itself on CUDA), for PaliGemma-3B-224 at batch 1 only: compiling takes a while.
    if [ -z "${SKIP_PEER:-}" ] && [ -z "${SKIP_COMPILED:-}" ] && [ "$m" = pg1-3b-224 ] && [ "$b" = 1 ]; then
      timeout 300 "$PY" benches/peers/transformers_peer.py --model "$CKPT/$m" --device "$DEV" --compile \
        --dtype "$DTYPE" --batch "$b" --new-tokens "$NEW_TOKENS" --runs "$RUNS" --warmup 3 2>>"$OUT/peer-stderr.log" | tee -a "$RESULTS"
    fi
  done
done

echo "== summary"
"$PY" benches/report.py "$RESULTS" | tee "$OUT/table.txt"
