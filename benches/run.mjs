#!/usr/bin/env node
// The CPU benchmark harness (`npm run bench`; see benches/README.md).
//
// Runs this engine through its Node API, transformers on PyTorch CPU and candle-transformers'
// own PaliGemma on the same random-weight real-size checkpoints, the same prompt, the same
// synthetic pixels and the same thread count, one engine at a time, each in its own child
// process (so peak RSS is per engine). Also measures the machine's memory read bandwidth and
// reports decode's share of it.
//
//   npm run bench -- --quick            PaliGemma-3B-224 only, 1 warm-up + 3 runs, 32 tokens
//   npm run bench                        + PaliGemma 2-3B-448, 64 tokens
//   npm run bench -- --json              ... and end the output with one JSON line
//   npm run bench -- --model-dir testdata/reference/pg1-tiny-a --no-wait   (smoke test)
//
// This file is also the child that runs the engine: `node benches/run.mjs --child paligemma ...`.

import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(HERE, '..')
// The prompt of every peer: image tokens × P, <bos>, these ids (modulo the vocabulary).
const TEXT_IDS = [21209, 659, 4401, 603, 476, 2204, 576, 573, 108]
const MODELS = {
  'pg1-3b-224': { preset: 'paligemma-3b-224', seed: 1, title: 'PaliGemma-3B-224' },
  'pg2-3b-448': { preset: 'paligemma2-3b-448', seed: 2, title: 'PaliGemma 2-3B-448' },
}
const ENGINES = ['paligemma', 'transformers', 'candle-transformers']
const RESULTS_BEGIN = '<!-- bench:begin (written by `npm run bench -- --write-results`) -->'
const RESULTS_END = '<!-- bench:end -->'

const OPTIONS = {
  quick: { type: 'boolean', default: false },
  json: { type: 'boolean', default: false },
  models: { type: 'string' },
  engines: { type: 'string' },
  'model-dir': { type: 'string' },
  threads: { type: 'string', default: '2' },
  runs: { type: 'string' },
  'new-tokens': { type: 'string' },
  warmup: { type: 'string', default: '1' },
  rounds: { type: 'string', default: '1' },
  'no-wait': { type: 'boolean', default: false },
  'max-wait': { type: 'string' },
  'no-bf16': { type: 'boolean', default: false },
  'write-results': { type: 'boolean', default: false },
  timeout: { type: 'string' },
  'wait-only': { type: 'boolean', default: false },
  help: { type: 'boolean', default: false },
  // child mode
  'also-dtypes': { type: 'string' },
  child: { type: 'string' },
  model: { type: 'string' },
  dtype: { type: 'string' },
}

const USAGE = `usage: npm run bench -- [options]
  --quick               PaliGemma-3B-224 only, 1 warm-up + 3 runs, 32 new tokens (a few minutes)
  --json                end the output with one JSON line holding every figure and ratio
  --models a,b          ${Object.keys(MODELS).join(', ')} (default: both; --quick: the first)
  --engines a,b         ${ENGINES.join(', ')} (default: all)
  --model-dir DIR       benchmark this checkpoint folder instead (e.g. testdata/reference/pg1-tiny-a);
                        also $PALIGEMMA_BENCH_MODEL_DIR
  --threads N           threads on every side (default 2)
  --runs N              measured runs per engine (default 3 quick, 5 for PG1 / 3 for PG2 otherwise)
  --new-tokens N        tokens per run, ≥ 32 for real figures (default 32 quick, 64 otherwise)
  --warmup N            warm-up runs (2 tokens) before measuring (default 1)
  --rounds R            run every engine R times, in a rotated order each round, and pool their runs
                        (host noise then falls on every engine alike; each round reloads the model)
  --no-wait             do not wait for a quiet machine
  --max-wait S          longest wait for a quiet machine, seconds (default 600 quick, 1200 otherwise)
  --no-bf16             do not write the bf16 checkpoints (the full run writes them for the GPU check)
  --write-results       replace the generated block of benches/RESULTS.md with this run's table
  --timeout S           per-engine limit, seconds (default 1800)
  --also-dtypes a,b     extra paligemma rows with these load dtypes (e.g. q8_0,q4k); the peers stay f32
  --wait-only           only wait for a quiet machine (same rule, --max-wait cap), then exit
Env: PALIGEMMA_BENCH_CACHE (checkpoints, logs, results; default benches/.cache),
     PALIGEMMA_BENCH_PYTHON (default benches/.venv/bin/python).`

const median = (v) => {
  const s = [...v].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}
const round = (x, digits) => (x === undefined || x === null || Number.isNaN(x) ? null : Number(x.toFixed(digits)))
const log = (...args) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...args)

/** The synthetic image of every peer: value i of image b = ((i·7 + b·13) mod 255)/127.5 − 1. */
function pixels(size, b = 0) {
  const px = new Float32Array(3 * size * size)
  for (let i = 0; i < px.length; i++) px[i] = ((i * 7 + b * 13) % 255) / 127.5 - 1
  return px
}

// ---------------------------------------------------------------------------------------------
// Child: this engine through the package's public API.

async function childPaligemma(args) {
  const { PaliGemma } = await import('../dist/index.js')
  const threads = Number(args.threads)
  const newTokens = Number(args['new-tokens'] ?? 32)
  const runs = Number(args.runs ?? 3)
  const warmup = Number(args.warmup ?? 1)
  const t0 = performance.now()
  const dtype = args.dtype ?? 'f32'
  const addon = addonPath()
  const addonStat = addon ? fs.statSync(addon) : undefined
  const model = await PaliGemma.load(args.model, { device: 'cpu', dtype, threads })
  const loadMs = performance.now() - t0
  const rssAfterLoadMb = process.memoryUsage().rss / 2 ** 20
  const { info } = model
  const inputIds = [...new Array(info.imageTokens).fill(info.imageTokenId), info.bosTokenId, ...TEXT_IDS.map((id) => id % info.vocabSize)]

  // One streamed request per run: the first chunk's arrival is the time to first token (vision
  // tower + prefill + sampling + delivery to JS), the rest is decode.
  async function once(n) {
    const pixelValues = pixels(info.imageSize)
    const t = performance.now()
    let first
    let last
    let count = 0
    const stream = model.stream({ inputIds, pixelValues, maxNewTokens: n })
    for await (const _chunk of stream) {
      const now = performance.now() - t
      if (count === 0) first = now
      last = now
      count++
    }
    const result = await stream.result
    return { first, last, count, result }
  }
  for (let i = 0; i < warmup; i++) await once(2)
  const ttft = []
  const decode = []
  const internalPrefill = []
  const internalDecode = []
  const finish = []
  let tokens = []
  for (let i = 0; i < runs; i++) {
    const r = await once(newTokens)
    ttft.push(r.first)
    decode.push((r.last - r.first) / Math.max(r.count - 1, 1))
    internalPrefill.push(r.result.timings.prefillMs)
    internalDecode.push(r.result.timings.decodeMs / Math.max(r.result.timings.decodeSteps, 1))
    finish.push(`${r.result.finishReason}:${r.count}`)
    tokens = r.result.tokenIds
  }
  await model.dispose()
  const cpu = process.cpuUsage()
  const d = median(decode)
  console.log(
    JSON.stringify({
      engine: dtype === 'f32' ? 'paligemma' : `paligemma-${dtype}`,
      model: path.basename(path.resolve(args.model)),
      device: 'cpu',
      dtype,
      addon: addonStat ? { mtime: addonStat.mtime.toISOString(), bytes: addonStat.size } : null,
      batch: 1,
      load_ms: round(loadMs, 1),
      ttft_ms: round(median(ttft), 2),
      decode_ms_per_token: round(d, 3),
      tokens_per_s: round(1e3 / d, 2),
      peak_rss_mb: round(process.resourceUsage().maxRSS / 1024, 1),
      rss_after_load_mb: round(rssAfterLoadMb, 1),
      cpu_s: round((cpu.user + cpu.system) / 1e6, 2),
      new_tokens: newTokens,
      runs,
      warmup,
      ttft_runs_ms: ttft.map((x) => round(x, 1)),
      decode_runs_ms: decode.map((x) => round(x, 2)),
      internal: { prefill_ms: round(median(internalPrefill), 2), decode_ms_per_token: round(median(internalDecode), 3) },
      finish,
      first_tokens: tokens.slice(0, 8),
      threads,
      versions: { node: process.version },
    }),
  )
}

// ---------------------------------------------------------------------------------------------
// Machine state.

/** CPU jiffies of the whole machine (USER_HZ = 100). */
function cpuStat() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = f
  return { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal, t: performance.now() }
}

/** Cores busy (and stolen by the hypervisor) between two samples. */
function cpuDelta(a, b) {
  const total = b.busy - a.busy + (b.idle - a.idle) + (b.steal - a.steal)
  const ncpu = os.cpus().length
  return {
    busyCores: total > 0 ? ((b.busy - a.busy) / total) * ncpu : 0,
    stealCores: total > 0 ? ((b.steal - a.steal) / total) * ncpu : 0,
    busyCpuS: (b.busy - a.busy) / 100,
    wallS: (b.t - a.t) / 1e3,
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function busyOver(ms) {
  const a = cpuStat()
  await sleep(ms)
  return cpuDelta(a, cpuStat())
}

/**
 * Waits until the machine is quiet: the 1-minute load average under `maxLoad` (when given) and
 * under `maxBusy` cores busy, for `holdS` seconds in a row; gives up after `capS` seconds.
 */
async function waitQuiet({ maxLoad, maxBusy, holdS, capS, stepS }) {
  const start = performance.now()
  let quietFor = 0
  let lastMsg = 0
  for (;;) {
    const d = await busyOver(stepS * 1e3)
    const la = os.loadavg()[0]
    const quiet = d.busyCores < maxBusy && (maxLoad === undefined || la < maxLoad)
    quietFor = quiet ? quietFor + stepS : 0
    const waited = (performance.now() - start) / 1e3
    if (quietFor >= holdS) return { waitedS: round(waited, 0), quiet: true, loadavg: round(la, 2) }
    if (waited >= capS) {
      log(`machine still busy after ${capS} s (load ${la.toFixed(2)}, ${d.busyCores.toFixed(2)} cores busy): measuring anyway`)
      return { waitedS: round(waited, 0), quiet: false, loadavg: round(la, 2) }
    }
    if (waited - lastMsg >= 30) {
      lastMsg = waited
      log(`waiting for a quiet machine: load ${la.toFixed(2)}, ${d.busyCores.toFixed(2)} cores busy, quiet for ${quietFor} s of ${holdS}`)
    }
  }
}

function sh(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }).trim()
  } catch {
    return null
  }
}

function machineInfo() {
  const lscpu = sh('lscpu', []) ?? ''
  const field = (name) => (lscpu.match(new RegExp(`^${name}:\\s*(.+)$`, 'm')) ?? [])[1]
  return {
    cpu: field('Model name') ?? os.cpus()[0]?.model,
    cores: Number(field('Core\\(s\\) per socket') ?? 0) * Number(field('Socket\\(s\\)') ?? 1) || os.cpus().length,
    threads_per_core: Number(field('Thread\\(s\\) per core') ?? 1),
    logical_cpus: os.cpus().length,
    memory_gb: round(os.totalmem() / 1e9, 1),
    hypervisor: field('Hypervisor vendor') ?? null,
    kernel: os.release(),
  }
}

function versions() {
  const lock = fs.readFileSync(path.join(ROOT, 'Cargo.lock'), 'utf8')
  const candle = (lock.match(/name = "candle-core"\nversion = "([^"]+)"/) ?? [])[1]
  const git = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', 'crates'])
  return { rustc: sh('rustc', ['--version']), candle, node: process.version, git: git ? `${git}${dirty ? ' (crates/ modified)' : ''}` : null }
}

// ---------------------------------------------------------------------------------------------
// Builds and checkpoints.

function newestMtime(dir, ext) {
  let newest = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.endsWith(ext)) newest = Math.max(newest, fs.statSync(path.join(e.parentPath ?? e.path, e.name)).mtimeMs)
  }
  return newest
}

function addonPath() {
  const dir = path.join(ROOT, 'npm', 'linux-x64-gnu')
  const f = fs.existsSync(dir) ? fs.readdirSync(dir).find((n) => n.endsWith('.node')) : undefined
  return f ? path.join(dir, f) : null
}

function checkPackage() {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) throw new Error('dist/index.js is missing: run `npm run build` (build:native, then build:ts) first')
  const addon = addonPath()
  if (!addon) throw new Error('the native addon is missing: run `npm run build:native` first')
  const built = fs.statSync(addon).mtimeMs
  const src = Math.max(newestMtime(path.join(ROOT, 'crates'), '.rs'), newestMtime(path.join(ROOT, 'crates'), '.toml'))
  if (src > built) log(`warning: crates/ changed after the addon was built (${new Date(built).toISOString()}); run \`npm run build:native\` to measure the current engine`)
  return { addon: path.relative(ROOT, addon), addon_built: new Date(built).toISOString() }
}

async function runLogged(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'], ...opts })
    p.on('error', reject)
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`))))
  })
}

async function buildCandlePeer() {
  log('building benches/candle-peer (candle-transformers peer, membw, flops), release, target/candle-peer')
  // Built from the repository root so that .cargo/config.toml (AVX2/FMA/F16C) applies.
  await runLogged('cargo', ['build', '--release', '--quiet', '--manifest-path', 'benches/candle-peer/Cargo.toml', '--target-dir', 'target/candle-peer'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  return path.join(ROOT, 'target', 'candle-peer', 'release')
}

async function engineBench() {
  // Any build of engine_bench writes the same checkpoints (Hub names, real shapes, a fixed seed),
  // so an existing one is used as is: no rebuild behind a busy engine build.
  const bin = path.join(ROOT, 'target', 'release', 'examples', 'engine_bench')
  if (!fs.existsSync(bin)) {
    log('building engine_bench (random-checkpoint writer)')
    await runLogged('cargo', ['build', '--release', '--quiet', '-p', 'paligemma', '--example', 'engine_bench'], { stdio: ['ignore', 'ignore', 'inherit'] })
  }
  return bin
}

function paramCount(dir) {
  // Sizes straight from the safetensors header(s): no need to load anything.
  const files = fs.existsSync(path.join(dir, 'model.safetensors'))
    ? ['model.safetensors']
    : [...new Set(Object.values(JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')).weight_map))]
  const tensors = {}
  for (const f of files) {
    const fd = fs.openSync(path.join(dir, f), 'r')
    const len = Buffer.alloc(8)
    fs.readSync(fd, len, 0, 8, 0)
    const n = Number(len.readBigUInt64LE())
    const header = Buffer.alloc(n)
    fs.readSync(fd, header, 0, n, 8)
    fs.closeSync(fd)
    for (const [name, spec] of Object.entries(JSON.parse(header.toString('utf8')))) {
      if (name !== '__metadata__') tensors[name] = spec.shape.reduce((a, b) => a * b, 1)
    }
  }
  let total = 0
  let decode = 0
  let vision = 0
  let embedding = 0
  const untiedHead = Object.keys(tensors).some((n) => n.includes('lm_head'))
  for (const [name, numel] of Object.entries(tensors)) {
    total += numel
    if (name.startsWith('vision_tower.') || name.startsWith('multi_modal_projector.')) vision += numel
    if (name.includes('embed_tokens')) embedding += numel
    // What one decode step reads: every decoder weight plus the LM head. The tied embedding is
    // the LM head (all of it is read); with an untied head, the embedding lookup reads one row.
    if (name.startsWith('language_model.') && !(untiedHead && name.includes('embed_tokens'))) decode += numel
  }
  return { total, decode, vision, embedding }
}

/** Multiply-add FLOPs of the time to first token: every vision weight once per patch, every
 * decoder weight once per prompt position (patches + about 6 text tokens), and the LM head for
 * the last position. Attention's own products are left out (under 3 % at 224 px). */
function ttftFlops(dir, counts) {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'))
  const v = cfg.vision_config ?? {}
  const patches = ((v.image_size ?? 224) / (v.patch_size ?? 14)) ** 2
  const decoderBody = counts.decode - counts.embedding
  return 2 * (counts.vision * patches + decoderBody * (patches + 6) + counts.embedding)
}

async function ensureCheckpoint(name, dtype) {
  const { preset, seed } = MODELS[name]
  const dir = path.join(cacheDir(), `${name}-${dtype}`)
  if (fs.existsSync(path.join(dir, 'model.safetensors')) && fs.existsSync(path.join(dir, 'config.json'))) return dir
  const bytesPerParam = dtype === 'f32' ? 4 : 2
  const approx = (name.startsWith('pg2') ? 3.03e9 : 2.93e9) * bytesPerParam
  const free = fs.statfsSync(cacheDir())
  if (free.bavail * free.bsize < approx + 2e9) throw new Error(`not enough disk for ${dir} (${(approx / 1e9).toFixed(1)} GB + 2 GB margin)`)
  const bin = await engineBench()
  const tmp = `${dir}.partial`
  fs.rmSync(tmp, { recursive: true, force: true })
  log(`writing ${path.relative(ROOT, dir)}: random weights, real shapes of ${preset}, ${dtype}, seed ${seed}`)
  await runLogged(bin, ['random-checkpoint', preset, tmp, dtype, String(seed)], { stdio: ['ignore', 'ignore', 'inherit'] })
  fs.renameSync(tmp, dir)
  return dir
}

function cacheDir() {
  const dir = path.resolve(process.env.PALIGEMMA_BENCH_CACHE ?? path.join(HERE, '.cache'))
  fs.mkdirSync(dir, { recursive: true })
  return dir
}

// ---------------------------------------------------------------------------------------------
// Running one engine.

function childEnv(threads) {
  const t = String(threads)
  return {
    ...process.env,
    RAYON_NUM_THREADS: t,
    CANDLE_NUM_THREADS: t,
    OMP_NUM_THREADS: t,
    MKL_NUM_THREADS: t,
    TOKENIZERS_PARALLELISM: 'false',
    HF_HUB_OFFLINE: '1',
    TRANSFORMERS_VERBOSITY: 'error',
    PYTHONUNBUFFERED: '1',
  }
}

async function runEngine(engine, dir, plan, ctx) {
  const common = ['--new-tokens', String(plan.newTokens), '--runs', String(plan.runs)]
  let cmd
  let args
  if (engine === 'paligemma' || engine.startsWith('paligemma-')) {
    const dtype = engine === 'paligemma' ? 'f32' : engine.slice('paligemma-'.length)
    cmd = process.execPath
    args = [fileURLToPath(import.meta.url), '--child', 'paligemma', '--model', dir, '--dtype', dtype, '--threads', String(ctx.threads), '--warmup', String(plan.warmup), ...common]
  } else if (engine === 'transformers') {
    cmd = ctx.python
    args = [path.join(HERE, 'peers', 'transformers_peer.py'), '--model', dir, '--device', 'cpu', '--dtype', 'f32', '--threads', String(ctx.threads),
      '--warmup', String(plan.warmup), '--single-pass', ...common]
  } else {
    cmd = path.join(ctx.peerBin, 'candle-peer')
    args = ['--model', dir, '--warmup', String(plan.warmup), ...common]
  }
  const logFile = path.join(ctx.logDir, `${path.basename(dir)}-${engine}.log`)
  const out = fs.openSync(logFile, 'w')
  fs.writeSync(out, `$ ${cmd} ${args.join(' ')}\n`)
  const a = cpuStat()
  const loadBefore = os.loadavg()[0]
  const started = performance.now()
  const stdout = await new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: ROOT, env: childEnv(ctx.threads), stdio: ['ignore', 'pipe', out] })
    let text = ''
    p.stdout.on('data', (d) => {
      text += d
      fs.writeSync(out, d)
    })
    const timer = setTimeout(() => {
      log(`${engine} passed ${ctx.timeoutS} s: killing it`)
      p.kill('SIGKILL')
    }, ctx.timeoutS * 1e3)
    p.on('error', reject)
    p.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve(text)
      else reject(new Error(`${engine} failed (${signal ?? `exit ${code}`}); see ${path.relative(ROOT, logFile)}`))
    })
  })
  fs.closeSync(out)
  const d = cpuDelta(a, cpuStat())
  const line = stdout.split('\n').filter((l) => l.trim().startsWith('{')).pop()
  if (!line) throw new Error(`${engine} printed no JSON line; see ${path.relative(ROOT, logFile)}`)
  const r = JSON.parse(line)
  r.engine = engine
  r.wall_s = round((performance.now() - started) / 1e3, 1)
  r.loadavg_before = round(loadBefore, 2)
  // CPU used by everything but this engine while it ran, in cores (other engineers' builds...).
  r.other_cores = r.cpu_s !== undefined ? round(Math.max(0, d.busyCpuS - r.cpu_s) / d.wallS, 2) : null
  r.steal_cores = round(d.stealCores, 2)
  return r
}

// ---------------------------------------------------------------------------------------------
// Report.

/** `list` rotated left by `n`: round r starts with engine r, so no engine always runs first. */
function rotate(list, n) {
  const k = n % list.length
  return [...list.slice(k), ...list.slice(0, k)]
}

/**
 * One engine's rounds as one row: the medians over every measured run of every round, the
 * median load, the largest peak RSS, and each round's own medians for the record.
 */
function pooled(results) {
  if (results.length === 1) return results[0]
  // The mean of the two middle values for an even count (the children's helper takes the upper).
  const mid = (values) => {
    const v = [...values].sort((a, b) => a - b)
    return (v[Math.floor((v.length - 1) / 2)] + v[Math.ceil((v.length - 1) / 2)]) / 2
  }
  const all = (key) => results.flatMap((r) => r[key] ?? [])
  const r = { ...results[0] }
  r.ttft_runs_ms = all('ttft_runs_ms')
  r.decode_runs_ms = all('decode_runs_ms')
  r.ttft_ms = round(mid(r.ttft_runs_ms), 1)
  r.decode_ms_per_token = round(mid(r.decode_runs_ms), 2)
  r.tokens_per_s = round(1e3 / r.decode_ms_per_token, 2)
  r.load_ms = round(mid(results.map((x) => x.load_ms)), 1)
  if (r.internal) {
    r.internal = {
      prefill_ms: round(mid(results.map((x) => x.internal.prefill_ms)), 2),
      decode_ms_per_token: round(mid(results.map((x) => x.internal.decode_ms_per_token)), 3),
    }
  }
  r.peak_rss_mb = Math.max(...results.map((x) => x.peak_rss_mb))
  r.other_cores = Math.max(...results.map((x) => x.other_cores ?? 0))
  r.wall_s = round(results.reduce((sum, x) => sum + x.wall_s, 0), 1)
  r.rounds = results.map((x) => ({ ttft_ms: x.ttft_ms, decode_ms_per_token: x.decode_ms_per_token, load_ms: x.load_ms }))
  return r
}

function ratios(ours, peer) {
  if (!ours || !peer) return null
  const q = (k) => (ours[k] && peer[k] ? round(peer[k] / ours[k], 2) : null)
  return { load: q('load_ms'), ttft: q('ttft_ms'), decode: q('decode_ms_per_token'), peak_rss: q('peak_rss_mb') }
}

/** Three significant digits at most, no exponent: 0.0152, 1.27, 10.4, 312. */
function fmt(x) {
  if (x === null || x === undefined) return '–'
  const a = Math.abs(x)
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : Number(x.toPrecision(3)).toString()
}

function markdown(report) {
  const L = []
  const m = report.machine
  L.push(`Run ${report.date} on ${m.cpu} (${m.cores} cores, ${m.threads_per_core} thread/core, ${m.memory_gb} GB${m.hypervisor ? `, ${m.hypervisor} VM` : ''}), ` +
    `${report.threads} threads on every side, f32, batch 1.`)
  L.push('')
  L.push(`Command: \`${report.command}\``)
  L.push('')
  const v = report.versions
  L.push(`Versions: ${v.rustc}; candle ${v.candle}; torch ${v.torch ?? '?'}; transformers ${v.transformers ?? '?'}; node ${v.node}; engine at ${v.git ?? '?'}, addon built ${report.package.addon_built}.`)
  L.push('')
  const bw = report.bandwidth
  if (bw) L.push(`Memory read bandwidth (streaming sum over ${bw.buffer_mib} MiB, best of ${bw.passes}): ` + bw.results.map((r) => `${r.threads} thread${r.threads > 1 ? 's' : ''} ${r.best_gb_s} GB/s (median ${r.median_gb_s})`).join(', ') + '.')
  const fl = report.compute
  if (fl) L.push(`f32 multiply-add peak (${fl.isa} FMA chains in registers, best of 3): ` + fl.results.map((r) => `${r.threads} thread${r.threads > 1 ? 's' : ''} ${r.gflop_s} GFLOP/s`).join(', ') + '.')
  L.push('')
  L.push(`Machine load: ${report.wait.quiet ? 'quiet' : 'NOT quiet'} at start (1-min load average ${report.wait.loadavg} after waiting ${report.wait.waitedS} s); per engine below ("other cores" = CPU used by other processes while the engine ran).`)
  L.push('')
  L.push('TTFT = time from the request to the first generated token (vision tower + prefill + first sampling); image preprocessing is not included, since every side is given the same pixel tensor. Decode = ms per token after the first. Each figure is the median of the runs; load = checkpoint folder to a ready model.')
  for (const mr of report.models) {
    L.push('')
    const rounds = mr.rounds > 1 ? ` per round, ${mr.rounds} rounds in rotated order (figures pool every round's runs)` : ''
    L.push(`### ${mr.title} (\`${mr.name}\`), ${mr.new_tokens} new tokens, ${mr.warmup} warm-up + ${mr.runs} runs${rounds}`)
    L.push('')
    L.push(`Decode reads ${fmt(mr.decode_bytes / 1e9)} GB per token (decoder + LM head in f32): a ${fmt(mr.floor_ms)} ms/token floor at ${mr.bandwidth_gb_s} GB/s ("decode % of bandwidth" = floor ÷ measured decode time). ` +
      `The time to first token needs ${fmt(mr.ttft_flops / 1e12)} TFLOP of matmuls: a ${fmt(mr.ttft_floor_ms / 1e3)} s floor at ${mr.peak_gflop_s} GFLOP/s ("TTFT % of peak" = floor ÷ measured TTFT).`)
    L.push('')
    L.push('| engine | load s | TTFT s | decode ms/token | tokens/s | peak RSS GB | decode % of bandwidth | TTFT % of peak | TTFT runs s | decode runs ms | other cores | load avg |')
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|')
    for (const e of mr.engines) {
      if (e.error) {
        L.push(`| ${e.engine} | failed: ${e.error.replace(/\|/g, '/')} ||||||||||| `)
        continue
      }
      L.push(`| ${e.engine} | ${fmt(e.load_ms / 1e3)} | ${fmt(e.ttft_ms / 1e3)} | ${fmt(e.decode_ms_per_token)} | ${fmt(e.tokens_per_s)} | ` +
        `${fmt(e.peak_rss_mb / 1024)} | ${e.bandwidth_share !== null ? fmt(e.bandwidth_share * 100) + ' %' : '–'} | ${e.compute_share != null ? fmt(e.compute_share * 100) + ' %' : '–'} | ` +
        `${e.ttft_runs_ms.map((x) => fmt(x / 1e3)).join(', ')} | ${e.decode_runs_ms.map((x) => fmt(x)).join(', ')} | ${e.other_cores ?? '–'} | ${e.loadavg_before} |`)
    }
    const rs = Object.entries(mr.ratios).filter(([, r]) => r)
    if (rs.length) {
      L.push('')
      L.push('Ratios, peer ÷ paligemma f32 (above 1: paligemma is faster / smaller); for paligemma-<dtype> rows, paligemma f32 ÷ that row:')
      L.push('')
      L.push('| peer | load | TTFT | decode | peak RSS |')
      L.push('|---|---:|---:|---:|---:|')
      for (const [peer, r] of rs) L.push(`| ${peer} | ${r.load}× | ${r.ttft}× | ${r.decode}× | ${r.peak_rss}× |`)
    }
    const ours = mr.engines.find((e) => e.engine === 'paligemma' && !e.error)
    if (ours?.internal) L.push('', `paligemma's own timings (medians): prefill ${fmt(ours.internal.prefill_ms / 1e3)} s, decode ${fmt(ours.internal.decode_ms_per_token)} ms/token; RSS after load ${fmt(ours.rss_after_load_mb / 1024)} GB.`)
  }
  return L.join('\n')
}

function writeResults(md) {
  const file = path.join(HERE, 'RESULTS.md')
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : `# CPU benchmark results\n\n${RESULTS_BEGIN}\n${RESULTS_END}\n`
  const a = text.indexOf(RESULTS_BEGIN)
  const b = text.indexOf(RESULTS_END)
  if (a < 0 || b < a) throw new Error(`benches/RESULTS.md has no ${RESULTS_BEGIN} … ${RESULTS_END} block`)
  fs.writeFileSync(file, `${text.slice(0, a + RESULTS_BEGIN.length)}\n${md}\n${text.slice(b)}`)
  log('updated benches/RESULTS.md')
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const { values: args } = parseArgs({ options: OPTIONS, allowPositionals: false })
  if (args.help) {
    console.log(USAGE)
    return
  }
  if (args.child === 'paligemma') return childPaligemma(args)
  if (args.child) throw new Error(`unknown child ${args.child}`)
  if (process.platform !== 'linux') throw new Error('the harness reads /proc: Linux only')
  if (args['wait-only']) {
    const w = await waitQuiet({ maxLoad: 1.0, maxBusy: 0.5, holdS: 60, capS: Number(args['max-wait'] ?? 600), stepS: 10 })
    console.log(JSON.stringify(w))
    process.exitCode = w.quiet ? 0 : 2
    return
  }

  const quick = args.quick
  const threads = Number(args.threads)
  const modelDir = args['model-dir'] ?? process.env.PALIGEMMA_BENCH_MODEL_DIR
  const engines = args.engines ? args.engines.split(',') : [...ENGINES]
  for (const e of engines) if (!ENGINES.includes(e)) throw new Error(`unknown engine ${e}`)
  // Extra rows of this engine in other load dtypes (quantized decoders): after the f32 row.
  const also = args['also-dtypes'] ? args['also-dtypes'].split(',').map((d) => `paligemma-${d}`) : []
  engines.splice(engines.includes('paligemma') ? engines.indexOf('paligemma') + 1 : 0, 0, ...also)
  const names = modelDir ? [path.basename(path.resolve(modelDir))] : args.models ? args.models.split(',') : quick ? ['pg1-3b-224'] : Object.keys(MODELS)
  for (const n of names) if (!modelDir && !MODELS[n]) throw new Error(`unknown model ${n}`)
  const timeoutS = Number(args.timeout ?? 1800)
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`
  const started = new Date()

  const pkg = engines.some((e) => e.startsWith('paligemma')) ? checkPackage() : {}
  const python = process.env.PALIGEMMA_BENCH_PYTHON ?? path.join(HERE, '.venv', 'bin', 'python')
  if (engines.includes('transformers') && !fs.existsSync(python)) throw new Error(`${python} is missing: run benches/setup.sh (or set PALIGEMMA_BENCH_PYTHON)`)
  const peerBin = await buildCandlePeer()

  // Checkpoints: f32 for the CPU runs; the full run also writes bf16 (the GPU check's dtype).
  const targets = []
  for (const name of names) {
    const dir = modelDir ? path.resolve(modelDir) : await ensureCheckpoint(name, 'f32')
    if (!modelDir && !quick && !args['no-bf16']) await ensureCheckpoint(name, 'bf16')
    targets.push({ name, dir })
  }

  const wait = args['no-wait']
    ? { waitedS: 0, quiet: null, loadavg: round(os.loadavg()[0], 2) }
    : await waitQuiet({ maxLoad: 1.0, maxBusy: 0.5, holdS: 60, capS: Number(args['max-wait'] ?? (quick ? 600 : 1200)), stepS: 10 })
  log(`start: load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`)

  const membw = JSON.parse(execFileSync(path.join(peerBin, 'membw'), ['--mib', '1024', '--passes', '7'], { encoding: 'utf8' }).trim().split('\n').pop())
  const bwAt = (n) => membw.results.find((r) => r.threads === n)?.best_gb_s ?? membw.results.at(-1).best_gb_s
  const bandwidth = bwAt(threads)
  log(`memory read bandwidth: ${membw.results.map((r) => `${r.threads}T ${r.best_gb_s} GB/s`).join(', ')}`)
  const flops = JSON.parse(execFileSync(path.join(peerBin, 'flops'), ['--threads', `1,${threads}`], { encoding: 'utf8' }).trim().split('\n').pop())
  const peakGflops = flops.results.find((r) => r.threads === threads)?.gflop_s ?? flops.results.at(-1).gflop_s
  log(`f32 FMA peak (${flops.isa}): ${flops.results.map((r) => `${r.threads}T ${r.gflop_s} GFLOP/s`).join(', ')}`)

  const logDir = path.join(cacheDir(), 'logs')
  fs.mkdirSync(logDir, { recursive: true })
  const ctx = { threads, python, peerBin, logDir, timeoutS }
  const report = {
    date: started.toISOString(),
    command,
    quick,
    threads,
    machine: machineInfo(),
    versions: versions(),
    package: pkg,
    wait,
    bandwidth: membw,
    compute: flops,
    models: [],
  }

  for (const { name, dir } of targets) {
    const pg2 = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).text_config?.model_type === 'gemma2'
    const plan = {
      newTokens: Number(args['new-tokens'] ?? (quick ? 32 : 64)),
      runs: Number(args.runs ?? (quick || pg2 ? 3 : 5)),
      warmup: Number(args.warmup),
    }
    const counts = paramCount(dir)
    const decodeParams = counts.decode
    const prefillFlops = ttftFlops(dir, counts)
    const ttftFloorMs = (prefillFlops / (peakGflops * 1e9)) * 1e3
    const decodeBytes = decodeParams * 4 // f32 compute on the CPU
    const floorMs = (decodeBytes / (bandwidth * 1e9)) * 1e3
    const mr = {
      name,
      title: MODELS[name]?.title ?? name,
      dir: path.relative(ROOT, dir) || dir,
      new_tokens: plan.newTokens,
      runs: plan.runs,
      warmup: plan.warmup,
      decode_bytes: decodeBytes,
      bandwidth_gb_s: bandwidth,
      floor_ms: round(floorMs, 2),
      ttft_flops: prefillFlops,
      peak_gflop_s: peakGflops,
      ttft_floor_ms: round(ttftFloorMs, 1),
      engines: [],
      ratios: {},
    }
    const rounds = Math.max(1, Number(args.rounds))
    mr.rounds = rounds
    const byEngine = new Map()
    for (let pass = 0; pass < rounds; pass++) {
      for (const engine of rotate(engines, pass)) {
        if (engine === 'candle-transformers' && pg2) {
          if (pass === 0) log(`${name}: skipping candle-transformers (it has no PaliGemma 2)`)
          continue
        }
        if (!args['no-wait']) await waitQuiet({ maxBusy: 0.5, holdS: 10, capS: 120, stepS: 5 })
        const which = rounds > 1 ? `, round ${pass + 1} of ${rounds}` : ''
        log(`${name}: ${engine} (${plan.warmup} warm-up + ${plan.runs} runs × ${plan.newTokens} tokens, ${threads} threads${which})`)
        if (!byEngine.has(engine)) byEngine.set(engine, [])
        try {
          const r = await runEngine(engine, dir, plan, ctx)
          log(`${name}: ${engine}: load ${(r.load_ms / 1e3).toFixed(1)} s, TTFT ${(r.ttft_ms / 1e3).toFixed(2)} s, decode ${r.decode_ms_per_token.toFixed(1)} ms/token, ` +
            `peak RSS ${(r.peak_rss_mb / 1024).toFixed(2)} GB, other cores ${r.other_cores}`)
          if (r.versions?.torch) Object.assign(report.versions, r.versions)
          byEngine.get(engine).push(r)
        } catch (error) {
          log(`${name}: ${engine}: ${error.message}`)
          byEngine.get(engine).push({ engine, error: error.message })
        }
      }
    }
    for (const results of byEngine.values()) {
      const failed = results.find((r) => r.error)
      if (failed) {
        mr.engines.push(failed)
        continue
      }
      const r = pooled(results)
      // The floor counts f32 bytes; a quantized row reads fewer, so no share for it.
      r.bandwidth_share = r.dtype === 'f32' ? round(floorMs / r.decode_ms_per_token, 3) : null
      // Likewise the f32 FMA peak bounds f32 rows only (quantized prefill runs int8 dot products).
      r.compute_share = r.dtype === 'f32' ? round(ttftFloorMs / r.ttft_ms, 3) : null
      mr.engines.push(r)
    }
    const ours = mr.engines.find((e) => e.engine === 'paligemma' && !e.error)
    for (const e of mr.engines) if (!e.engine.startsWith('paligemma') && !e.error) mr.ratios[e.engine] = ratios(ours, e)
    // Quantized rows against the f32 row (f32 ÷ quantized: above 1, the quantized one is faster).
    for (const e of mr.engines) if (e.engine.startsWith('paligemma-') && !e.error) mr.ratios[e.engine] = ratios(e, ours)
    report.models.push(mr)
  }
  report.finished = new Date().toISOString()

  const md = markdown(report)
  console.log(md)
  const resultsDir = path.join(cacheDir(), 'results')
  fs.mkdirSync(resultsDir, { recursive: true })
  const stamp = started.toISOString().replace(/[:.]/g, '-')
  fs.writeFileSync(path.join(resultsDir, `${stamp}.json`), JSON.stringify(report, null, 1))
  fs.writeFileSync(path.join(resultsDir, `${stamp}.md`), md + '\n')
  log(`saved ${path.relative(ROOT, path.join(resultsDir, stamp))}.{json,md}`)
  if (args['write-results']) writeResults(md)
  if (args.json) console.log(JSON.stringify(report))
  if (report.models.some((m) => m.engines.some((e) => e.error))) process.exitCode = 1
}

main().catch((error) => {
  console.error(`bench: ${error.stack ?? error}`)
  process.exit(1)
})
