#!/usr/bin/env bash
# Short fuzzing smoke run: each cargo-fuzz target for FUZZ_SECONDS (default 20) seconds,
# starting from the committed regressions (testdata/fuzz-regressions/<target>/), seeds taken from
# testdata/, and a local corpus in fuzz/corpus/<target>/ when one exists (it is not committed;
# see fuzz/README.md). Everything is copied, so the run never dirties the repository. Skips with
# a message, exit 0, when nightly Rust or cargo-fuzz is missing.
#
#   scripts/fuzz-smoke.sh                 # all targets
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh config_parse npz_reader
#
# A crash fails the script (exit 1) and leaves the input under fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
fuzz_dir="$(pwd)"

seconds="${FUZZ_SECONDS:-20}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_loader config_parse npz_reader image_decode)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: skipped (no nightly Rust toolchain; install with 'rustup toolchain install nightly')"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: skipped (cargo-fuzz is not installed; install with 'cargo install cargo-fuzz')"
  exit 0
fi

# Sensible input sizes per target (see fuzz/README.md).
max_len() {
  case "$1" in
    safetensors_loader) echo 65536 ;;
    config_parse) echo 16384 ;;
    npz_reader) echo 65536 ;;
    image_decode) echo 65536 ;;
    *) echo 65536 ;;
  esac
}

# A few real inputs per target, from testdata/ (a fresh clone has no corpus).
seed_from_testdata() {
  local target=$1 out=$2 n=0 f
  case "$target" in
    config_parse) for f in ../testdata/reference/*/config.json ../testdata/e2e-caption/config.json; do cp "$f" "$out/seed-$((n++))"; done ;;
    safetensors_loader) for f in ../testdata/reference/*/model.safetensors ../testdata/vae/*.safetensors; do { printf '\0'; cat "$f"; } >"$out/seed-$((n++))"; done ;;
    npz_reader) for f in ../testdata/reference/*/checkpoint.npz; do cp "$f" "$out/seed-$((n++))"; done ;;
    image_decode) for f in ../testdata/processor/*.png ../testdata/processor/*.jpg; do { printf '\0'; cat "$f"; } >"$out/seed-$((n++))"; done ;;
  esac
}

# No -O: cargo-fuzz's default build keeps debug assertions and overflow checks on.
if ! cargo +nightly fuzz build >"${TMPDIR:-/tmp}/fuzz-smoke-build.log" 2>&1; then
  tail -n 30 "${TMPDIR:-/tmp}/fuzz-smoke-build.log"
  echo "fuzz-smoke: build failed"
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
  corpus="$work/$target"
  mkdir -p "$corpus"
  [ -d "corpus/$target" ] && cp -r "corpus/$target/." "$corpus/"
  [ -d "../testdata/fuzz-regressions/$target" ] && cp -r "../testdata/fuzz-regressions/$target/." "$corpus/"
  seed_from_testdata "$target" "$corpus"
  echo "fuzz-smoke: $target for ${seconds}s"
  # -jobs=1 makes libFuzzer write its log to fuzz-0.log in the working directory.
  if (cd "$work" && cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$(max_len "$target")" \
      -jobs=1 -print_final_stats=1 >"$work/$target.cargo.log" 2>&1); then
    grep -E '^(Done [0-9]+ runs|stat::average_exec_per_sec)' "$work/fuzz-0.log" || true
  else
    echo "fuzz-smoke: $target FAILED; last lines of its log:"
    tail -n 40 "$work/fuzz-0.log" 2>/dev/null || tail -n 40 "$work/$target.cargo.log"
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: crashes in ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets ran ${seconds}s each without a crash"
