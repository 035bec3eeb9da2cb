#!/usr/bin/env bash
# Packs the package as npm would publish it, installs it in an empty folder with no registry and
# no Rust toolchain, and runs the CLI there: `npx paligemma --help`, `info` and a caption on the
# tiny fixture model.
#
# What is installed: the main tarball plus this platform's addon tarball (npm/<platform>/), the
# way npm assembles them from the registry after a release. The main package lists every
# platform package in optionalDependencies; those are not published at test time, so npm runs
# with --offline (and a dead registry address, an empty cache and user config): it makes no
# network request at all, the explicit platform tarball satisfies its optional dependency, and
# the other platforms' packages (unfetchable, and for other OS/CPUs anyway) are skipped as
# failed optional dependencies. The script checks npm made no HTTP request.
#
# Usage: scripts/test-pack-install.sh        (SKIP_BUILD=1 to use the current dist/ and addon)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

SUFFIX=$(node -e '
  const { platform, arch } = process
  let libc = ""
  if (platform === "linux") {
    const report = process.report?.getReport()
    libc = report?.header?.glibcVersionRuntime ? "-gnu" : "-musl"
  } else if (platform === "win32") libc = "-msvc"
  console.log(`${platform}-${arch}${libc}`)')
PLATFORM_DIR="npm/$SUFFIX"
[ -f "$PLATFORM_DIR/package.json" ] || fail "no per-platform package folder $PLATFORM_DIR"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "build (native addon + TypeScript)"
  npm run build
fi
[ -f "$PLATFORM_DIR/paligemma.$SUFFIX.node" ] || fail "$PLATFORM_DIR/paligemma.$SUFFIX.node is missing: run npm run build:native"
[ -f dist/src/cli.js ] || fail "dist/src/cli.js is missing: run npm run build:ts"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/paligemma-pack-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/packs" "$WORK/app" "$WORK/cache" "$WORK/model"
: > "$WORK/npmrc"

# The checkout carries no platform pins (they would break `npm ci`); add them for the pack, as a
# release does, and put package.json back afterwards.
REPO_PACKAGE_JSON="$PWD/package.json" # absolute: the script changes directory before it exits
cp "$REPO_PACKAGE_JSON" "$WORK/package.json.orig"
trap 'cp "$WORK/package.json.orig" "$REPO_PACKAGE_JSON"; rm -rf "$WORK"' EXIT
node scripts/add-platform-pins.mjs

step "npm pack (main package and $SUFFIX)"
MAIN_TGZ=$(npm pack --silent --pack-destination "$WORK/packs" | tail -n 1)
PLATFORM_TGZ=$(cd "$PLATFORM_DIR" && npm pack --silent --pack-destination "$WORK/packs" | tail -n 1)
MAIN_TGZ="$WORK/packs/$MAIN_TGZ"
PLATFORM_TGZ="$WORK/packs/$PLATFORM_TGZ"
echo "$(basename "$MAIN_TGZ") $(du -h "$MAIN_TGZ" | cut -f1), $(basename "$PLATFORM_TGZ") $(du -h "$PLATFORM_TGZ" | cut -f1)"

step "tarball contents"
MAIN_FILES=$(tar -tzf "$MAIN_TGZ")
for f in package/package.json package/README.md package/dist/index.js package/dist/index.d.ts package/dist/queue.js package/dist/src/cli.js package/dist/src/hub.js package/dist/src/native.js package/dist/src/serve/ui/index.html package/dist/src/serve/ui/app.js; do
  grep -qx "$f" <<<"$MAIN_FILES" || fail "$f is not in the main tarball"
done
if grep -Eq '\.node$|^package/(src|crates|testdata|__test__|target|examples)/|\.ts$' <<<"$(grep -v '\.d\.ts$' <<<"$MAIN_FILES")"; then
  fail "the main tarball holds files it should not: $(grep -E '\.node$|^package/(src|crates|testdata|__test__|target|examples)/' <<<"$MAIN_FILES" | head -5)"
fi
# sed reads the whole stream: `head` would close the pipe early and, under pipefail, fail on tar's SIGPIPE.
[ "$(tar -xzOf "$MAIN_TGZ" package/dist/src/cli.js | sed -n 1p)" = '#!/usr/bin/env node' ] || fail "dist/src/cli.js does not start with #!/usr/bin/env node"
tar -xzOf "$MAIN_TGZ" package/package.json | node -e '
  let text = ""; process.stdin.on("data", (d) => (text += d)).on("end", () => {
    const pkg = JSON.parse(text)
    const problems = []
    if (Object.keys(pkg.dependencies ?? {}).length) problems.push(`dependencies must be empty (install needs no registry): ${Object.keys(pkg.dependencies)}`)
    if (pkg.bin?.paligemma !== "./dist/src/cli.js") problems.push(`bin.paligemma is ${pkg.bin?.paligemma}`)
    if (!pkg.optionalDependencies?.["paligemma-'"$SUFFIX"'"]) problems.push("optionalDependencies lacks paligemma-'"$SUFFIX"'")
    for (const [name, version] of Object.entries(pkg.optionalDependencies ?? {})) if (version !== pkg.version) problems.push(`${name}@${version} is not ${pkg.version}`)
    if (problems.length) { console.error(problems.join("\n")); process.exit(1) }
  })' || fail "package.json of the tarball"
tar -tzf "$PLATFORM_TGZ" | grep -qx "package/paligemma.$SUFFIX.node" || fail "the platform tarball lacks paligemma.$SUFFIX.node"

# A PATH with node and npm but no Rust toolchain.
CLEAN_PATH=""
for dir in "$(dirname "$(command -v node)")" "$(dirname "$(command -v npm)")" /usr/local/bin /usr/bin /bin; do
  [ -d "$dir" ] || continue
  [ -x "$dir/cargo" ] || [ -x "$dir/rustc" ] || [ -x "$dir/rustup" ] && continue
  case ":$CLEAN_PATH:" in *":$dir:"*) ;; *) CLEAN_PATH="${CLEAN_PATH:+$CLEAN_PATH:}$dir" ;; esac
done
run_clean() {
  env -i PATH="$CLEAN_PATH" HOME="$WORK/home" TMPDIR="${TMPDIR:-/tmp}" LANG=C.UTF-8 \
    npm_config_userconfig="$WORK/npmrc" npm_config_cache="$WORK/cache" npm_config_update_notifier=false \
    HF_HUB_OFFLINE=1 "$@"
}
run_clean bash -c '! command -v cargo && ! command -v rustc' >/dev/null || fail "cargo or rustc is still on the clean PATH ($CLEAN_PATH)"
mkdir -p "$WORK/home"

step "npm install in an empty folder (offline, no Rust toolchain)"
cd "$WORK/app"
run_clean npm install --offline --no-audit --no-fund --loglevel=http \
  --registry=http://127.0.0.1:9/ "$MAIN_TGZ" "$PLATFORM_TGZ" >"$WORK/install.log" 2>&1 ||
  { cat "$WORK/install.log"; fail "npm install"; }
if grep -E 'http fetch (GET|POST|HEAD)' "$WORK/install.log" | grep -v ' (cache ' >/dev/null; then
  cat "$WORK/install.log"; fail "npm made network requests"
fi
[ -f "node_modules/paligemma-$SUFFIX/paligemma.$SUFFIX.node" ] || fail "the platform package was not installed"
[ -x node_modules/.bin/paligemma ] || fail "node_modules/.bin/paligemma is missing"
OTHERS=$(find node_modules -maxdepth 1 -name 'paligemma-*' ! -name "paligemma-$SUFFIX" | wc -l)
[ "$OTHERS" -eq 0 ] || fail "other platform packages were installed: $(ls -d node_modules/paligemma-*)"
! grep -q '"resolved": "http' package-lock.json || fail "the lockfile resolved something from a registry"
echo "installed: $(ls -d node_modules/* | tr '\n' ' ')"

step "npx paligemma --help"
HELP=$(run_clean npx --offline --no -- paligemma --help) || fail "npx paligemma --help exited $?"
for command in caption ask ocr detect segment generate info convert convert-vae quantize bench; do
  grep -Eq "^  $command " <<<"$HELP" || fail "--help does not list $command"
done
# npx takes a --help after the command name for itself; `paligemma help` avoids the clash.
[ "$(run_clean npx --offline --no paligemma help)" = "$HELP" ] || fail "npx paligemma help differs from -- --help"
echo "ok: lists every command"

step "npx paligemma on the tiny fixture model"
cp "$REPO/testdata/reference/pg1-tiny-a/config.json" "$REPO/testdata/reference/pg1-tiny-a/model.safetensors" "$WORK/model/"
cp "$REPO/testdata/tokenizers/tiny/tokenizer.json" "$WORK/model/"
cp "$REPO/testdata/e2e-caption/image.png" "$WORK/image.png"
INFO=$(run_clean npx --offline --no -- paligemma info "$WORK/model") || fail "paligemma info exited $?"
grep -Eq '^architecture +paligemma ' <<<"$INFO" || fail "info: $INFO"
grep -Eq '^parameters +.*\(([0-9]+)\)' <<<"$INFO" || fail "info: $INFO"
echo "ok: info"
set +e
CAPTION=$(run_clean npx --offline --no -- paligemma caption --model "$WORK/model" --image "$WORK/image.png" --max-new-tokens 8 --seed 1 --json 2>"$WORK/caption.err")
STATUS=$?
set -e
[ "$STATUS" -eq 0 ] || { cat "$WORK/caption.err"; fail "paligemma caption exited $STATUS"; }
node -e '
  const r = JSON.parse(process.argv[1])
  if (r.prompt !== "caption en" || !Array.isArray(r.tokenIds) || r.tokenIds.length < 1 || r.tokenIds.length > 8 || typeof r.text !== "string") {
    console.error("unexpected caption output", r); process.exit(1)
  }
  console.log(`ok: caption ${JSON.stringify(r.text)} (${r.tokenIds.length} tokens, ${r.finishReason})`)' "$CAPTION" || fail "caption output"
STREAMED=$(run_clean npx --offline --no -- paligemma caption --model "$WORK/model" --image "$WORK/image.png" --max-new-tokens 8 --seed 1) || fail "paligemma caption (streamed) exited $?"
[ "$STREAMED" = "$(node -e 'process.stdout.write(JSON.parse(process.argv[1]).text)' "$CAPTION")" ] || fail "the streamed caption differs from --json's text"
echo "ok: streamed caption matches"

step "the library from the installed package uses the platform package's addon"
cat > check.mjs <<'EOF'
import { readFileSync } from 'node:fs'
import { PaliGemma, inspectModel } from 'paligemma'
const [dir, suffix] = process.argv.slice(2)
const model = await PaliGemma.load(dir)
const summary = await inspectModel(dir)
if (summary.parameterCount <= 0 || !model.info.hasTokenizer) throw new Error('unexpected model')
await model.dispose()
let maps = ''
try { maps = readFileSync('/proc/self/maps', 'utf8') } catch {}
if (maps) {
  const addons = [...new Set(maps.split('\n').filter((l) => l.endsWith('.node')).map((l) => l.split(/\s+/).pop()))]
  const expected = `/node_modules/paligemma-${suffix}/paligemma.${suffix}.node`
  if (addons.length !== 1 || !addons[0].endsWith(expected)) throw new Error(`loaded addons: ${addons.join(', ')}; expected …${expected}`)
  console.log(`ok: ${addons[0]}`)
}
EOF
run_clean node check.mjs "$WORK/model" "$SUFFIX" || fail "library check"

if [ "$SUFFIX" = linux-x64-gnu ]; then
  step "an installed CUDA build on a machine without an NVIDIA driver"
  # The real CUDA build needs the driver's libcuda.so.1 to load (cudarc links it). Building it
  # takes a CUDA toolkit and a second candle build, so this stands in a shared object with the
  # same dependency, linked against a stub that is then removed, as on a machine without the
  # driver. It ships under the real package manifest and is installed from its tarball.
  FAKE="$WORK/fake-cuda"
  mkdir -p "$FAKE/stub" "$FAKE/package"
  echo 'int cuInit(unsigned flags) { return 0; }' > "$FAKE/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$FAKE/stub/libcuda.so" "$FAKE/stub.c"
  echo 'extern int cuInit(unsigned); int paligemma_needs_the_driver(void) { return cuInit(0); }' > "$FAKE/addon.c"
  cc -shared -fPIC -Wl,--no-as-needed -o "$FAKE/package/paligemma.$SUFFIX-cuda.node" "$FAKE/addon.c" -L"$FAKE/stub" -lcuda
  rm -r "$FAKE/stub"
  cp "$REPO/npm/$SUFFIX-cuda/package.json" "$FAKE/package/"
  CUDA_TGZ="$WORK/packs/$(cd "$FAKE/package" && npm pack --silent --pack-destination "$WORK/packs" | tail -n 1)"
  run_clean npm install --offline --no-audit --no-fund --registry=http://127.0.0.1:9/ "$CUDA_TGZ" >>"$WORK/install.log" 2>&1 ||
    { cat "$WORK/install.log"; fail "npm install of the CUDA package"; }
  cat > fallback.mjs <<'EOF'
import { PaliGemma } from 'paligemma'
const [dir, mode] = process.argv.slice(2)
const warnings = []
process.on('warning', (w) => warnings.push(w))
const check = (ok, what) => { if (!ok) throw new Error(what) }
const model = await PaliGemma.load(dir, { device: 'auto' })
await new Promise((resolve) => setImmediate(resolve)) // warnings are emitted on the next tick
const fallbacks = warnings.filter((w) => w.code === 'PALIGEMMA_CPU_FALLBACK')
check(model.info.device === 'cpu', `auto ran on ${model.info.device}`)
if (mode === 'no-cuda') {
  check(fallbacks.length === 0 && model.info.deviceFallback === undefined, `PALIGEMMA_NO_CUDA=1 still reports a fallback: ${fallbacks.map((w) => w.message)}`)
  console.log('ok: PALIGEMMA_NO_CUDA=1 skips the CUDA build without a warning')
} else {
  check(/CUDA build could not be loaded.*libcuda\.so\.1/.test(model.info.deviceFallback ?? ''), `info.deviceFallback: ${model.info.deviceFallback}`)
  check(fallbacks.length === 1 && fallbacks[0].message.includes(model.info.deviceFallback), `warnings: ${warnings.map((w) => `${w.code}: ${w.message}`)}`)
  const cpu = await PaliGemma.load(dir, { device: 'cpu' })
  check(cpu.info.deviceFallback === undefined, 'device cpu reports a fallback')
  await cpu.dispose()
  const error = await PaliGemma.load(dir, { device: 'cuda' }).then(() => undefined, (e) => e)
  check(error?.code === 'ERR_DEVICE_UNAVAILABLE' && /libcuda\.so\.1/.test(error.message), `device cuda: ${error?.code}: ${error?.message}`)
  check(warnings.filter((w) => w.code === 'PALIGEMMA_CPU_FALLBACK').length === 1, 'the fallback was warned about more than once')
  console.log(`ok: auto falls back with one warning (${fallbacks[0].message.slice(0, 110)}…); cuda is ERR_DEVICE_UNAVAILABLE naming libcuda.so.1`)
}
await model.dispose()
EOF
  run_clean node fallback.mjs "$WORK/model" || fail "CUDA fallback check"
  run_clean env PALIGEMMA_NO_CUDA=1 node fallback.mjs "$WORK/model" no-cuda || fail "PALIGEMMA_NO_CUDA check"
fi

step "paligemma/queue without its optional peers (bullmq, ioredis)"
QUEUE=$(run_clean node --input-type=module -e "
  const queue = await import('paligemma/queue')
  const error = await queue.enqueueJobs({ connection: 'redis://127.0.0.1:9' }, []).then(() => undefined, (e) => e)
  console.log(Object.keys(queue).sort().join(','), error?.code, error?.message)") || fail "import paligemma/queue"
grep -q '^cancelJob,cancelTopicOf,collectResults,connectionOptions,createWorker,enqueueJobs,jobId ERR_INVALID_ARGUMENT .*npm install bullmq ioredis' <<<"$QUEUE" || fail "paligemma/queue without bullmq: $QUEUE"
echo "ok: the subpath loads, and using it says to install bullmq and ioredis"

echo "pack/install test passed"
