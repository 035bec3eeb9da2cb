#!/usr/bin/env bash
# Runs every test: the Rust workspace (parity, converter, image, text, segmentation, unit
# tests), then the Node addon build and the ava suite. Fails loudly if a stage ran no tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2} CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-2}
LOGS=${TEST_LOGS:-target/test-logs}
mkdir -p "$LOGS"

echo "== cargo test (release profile, shared with the addon build)"
# The same --target as `napi build` passes, so the addon reuses these artifacts (one candle build).
# Capture cargo's own status: `|| true` on a pipeline would reset PIPESTATUS and hide a failure.
set +e
cargo test --release --workspace --all-targets --target x86_64-unknown-linux-gnu -- --nocapture 2>&1 | tee "$LOGS/cargo.log" |
  grep -E '^(parity |test result|error|warning: unused)|FAILED|panicked'
cargo_status=${PIPESTATUS[0]}
set -e
[ "$cargo_status" -eq 0 ] || { echo "cargo test failed with status $cargo_status (full log: $LOGS/cargo.log)"; exit 1; }
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$LOGS/cargo.log" | awk '{s+=$4} END {print s+0}')
grep -q '^parity pg1-tiny-a: .*ids=match' "$LOGS/cargo.log" || { echo "the parity test printed no pg1 line"; exit 1; }
grep -q '^parity pg2-tiny-a: .*ids=match' "$LOGS/cargo.log" || { echo "the parity test printed no pg2 line"; exit 1; }
[ "$passed" -ge 100 ] || { echo "only $passed Rust tests passed; expected at least 100"; exit 1; }
echo "Rust: $passed tests passed"

echo "== addon build"
npm run build:native
echo "== ava"
npm test 2>&1 | tee "$LOGS/ava.log"
test "${PIPESTATUS[0]}" -eq 0 || exit 1
grep -Eq '[0-9]+ tests? passed' "$LOGS/ava.log" || { echo "ava reported no passing tests"; exit 1; }

echo "== the release and CI workflows (actionlint)"
bash scripts/lint-workflows.sh

echo "== pack, install into an empty folder without Rust, run the CLI there"
SKIP_BUILD=1 bash scripts/test-pack-install.sh 2>&1 | tee "$LOGS/pack.log"
test "${PIPESTATUS[0]}" -eq 0 || { echo "the pack/install test failed"; exit 1; }
echo "test-all: every stage passed"
