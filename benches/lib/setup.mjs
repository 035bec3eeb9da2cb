// What the harness needs before it measures: the built package, the candle peer, the probes
// and the random real-size checkpoints.

import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { HERE, MODELS, ROOT, log } from './common.mjs'

export function newestMtime(dir, ext) {
  let newest = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.endsWith(ext)) newest = Math.max(newest, fs.statSync(path.join(e.parentPath ?? e.path, e.name)).mtimeMs)
  }
  return newest
}

export function addonPath() {
  const dir = path.join(ROOT, 'npm', 'linux-x64-gnu')
  const f = fs.existsSync(dir) ? fs.readdirSync(dir).find((n) => n.endsWith('.node')) : undefined
  return f ? path.join(dir, f) : null
}

export function checkPackage() {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) throw new Error('dist/index.js is missing: run `npm run build` (build:native, then build:ts) first')
  const addon = addonPath()
  if (!addon) throw new Error('the native addon is missing: run `npm run build:native` first')
  const built = fs.statSync(addon).mtimeMs
  const src = Math.max(newestMtime(path.join(ROOT, 'crates'), '.rs'), newestMtime(path.join(ROOT, 'crates'), '.toml'))
  if (src > built) log(`warning: crates/ changed after the addon was built (${new Date(built).toISOString()}); run \`npm run build:native\` to measure the current engine`)
  return { addon: path.relative(ROOT, addon), addon_built: new Date(built).toISOString() }
}

export async function runLogged(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'], ...opts })
    p.on('error', reject)
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`))))
  })
}

export async function buildCandlePeer() {
  log('building benches/candle-peer (candle-transformers peer, membw, flops), release, target/candle-peer')
  // Built from the repository root so that .cargo/config.toml (AVX2/FMA/F16C) applies.
  await runLogged('cargo', ['build', '--release', '--quiet', '--manifest-path', 'benches/candle-peer/Cargo.toml', '--target-dir', 'target/candle-peer'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  return path.join(ROOT, 'target', 'candle-peer', 'release')
}

export async function engineBench() {
  // Any build of engine_bench writes the same checkpoints (Hub names, real shapes, a fixed seed),
  // so an existing one is used as is: no rebuild behind a busy engine build.
  const bin = path.join(ROOT, 'target', 'release', 'examples', 'engine_bench')
  if (!fs.existsSync(bin)) {
    log('building engine_bench (random-checkpoint writer)')
    await runLogged('cargo', ['build', '--release', '--quiet', '-p', 'paligemma', '--example', 'engine_bench'], { stdio: ['ignore', 'ignore', 'inherit'] })
  }
  return bin
}

export function paramCount(dir) {
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
export function ttftFlops(dir, counts) {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'))
  const v = cfg.vision_config ?? {}
  const patches = ((v.image_size ?? 224) / (v.patch_size ?? 14)) ** 2
  const decoderBody = counts.decode - counts.embedding
  return 2 * (counts.vision * patches + decoderBody * (patches + 6) + counts.embedding)
}

export async function ensureCheckpoint(name, dtype) {
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

export function cacheDir() {
  const dir = path.resolve(process.env.PALIGEMMA_BENCH_CACHE ?? path.join(HERE, '.cache'))
  fs.mkdirSync(dir, { recursive: true })
  return dir
}

/** The checkpoint folder with PaliGemma's tokenizer: links to the weights and config. */
export async function checkpointWithTokenizer() {
  const weights = await ensureCheckpoint('pg1-3b-224', 'f32')
  const dir = path.join(cacheDir(), 'pg1-3b-224-serve')
  fs.mkdirSync(dir, { recursive: true })
  for (const file of ['config.json', 'model.safetensors']) {
    if (!fs.existsSync(path.join(dir, file))) fs.symlinkSync(path.join(weights, file), path.join(dir, file))
  }
  const tokenizer = path.join(dir, 'tokenizer.json')
  if (!fs.existsSync(tokenizer)) {
    const gemma = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-gemini', 'models', 'tokenizer.json')
    await new Promise((resolve, reject) =>
      spawn(process.execPath, [path.join(ROOT, 'scripts', 'make-paligemma-tokenizer.mjs'), gemma, tokenizer], { stdio: 'inherit' }).once('exit', (c) => (c === 0 ? resolve() : reject(new Error('tokenizer')))),
    )
  }
  return dir
}
