#!/usr/bin/env node
// Where the engine's CPU time goes, phase by phase: loads a checkpoint through the package's Node
// API, then attaches `perf record` to this very process for the prefill (request → first token:
// vision tower + projector + Gemma prefill) and, separately, for decode (first → last token).
// (and the load before them). Prints the hottest symbols of each phase and keeps the perf data under the bench cache.
//
//   node benches/profile.mjs [--model DIR] [--dtype f32|q8_0|q4k] [--threads 2] [--decode-tokens 48] [--freq 499]
//                            [--call-graph dwarf] [--top 30]
// Default model: $PALIGEMMA_BENCH_CACHE/pg1-3b-224-f32 (written by `npm run bench`).
// Needs `perf` (linux-perf) and permission to profile this process (root or
// kernel.perf_event_paranoid ≤ 1 for another user's... it is our own child here, ≤ 2 suffices).

import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { pixels, promptIds } from './lib/common.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const cache = path.resolve(process.env.PALIGEMMA_BENCH_CACHE ?? path.join(HERE, '.cache'))

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(cache, 'pg1-3b-224-f32') },
    threads: { type: 'string', default: '2' },
    dtype: { type: 'string', default: 'f32' },
    'decode-tokens': { type: 'string', default: '48' },
    freq: { type: 'string', default: '499' },
    'call-graph': { type: 'string' },
    top: { type: 'string', default: '30' },
  },
})
for (const k of ['RAYON_NUM_THREADS', 'CANDLE_NUM_THREADS']) {
  if (process.env[k] !== args.threads) {
    // candle sizes its pools from the environment at first use: re-exec with it set.
    const env = { ...process.env, RAYON_NUM_THREADS: args.threads, CANDLE_NUM_THREADS: args.threads }
    const p = spawn(process.execPath, process.argv.slice(1), { stdio: 'inherit', env })
    p.on('exit', (code) => process.exit(code ?? 1))
    await new Promise(() => {})
  }
}

const { PaliGemma } = await import('../dist/index.js')
const outDir = path.join(cache, 'profile')
fs.mkdirSync(outDir, { recursive: true })
const log = (...a) => console.error(`[profile ${new Date().toISOString().slice(11, 19)}]`, ...a)

function perfRecord(name) {
  const file = path.join(outDir, `${name}.data`)
  const cg = args['call-graph'] ? ['--call-graph', args['call-graph']] : []
  const p = spawn('perf', ['record', '-q', '-F', args.freq, ...cg, '-p', String(process.pid), '-o', file], { stdio: ['ignore', 'ignore', 'inherit'] })
  const exited = new Promise((r) => p.on('exit', r))
  return {
    file,
    stop: async () => {
      p.kill('SIGINT')
      await exited
    },
  }
}

function report(file, title) {
  const sortKeys = args['call-graph'] ? ['--children'] : ['--no-children']
  const text = execFileSync('perf', ['report', '-i', file, ...sortKeys, '--sort', 'symbol', '--stdio', '--percent-limit', '0.3', '-g', 'none'], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
    stdio: ['ignore', 'pipe', 'ignore'],
  })
  const lines = text.split('\n').filter((l) => l.trim() && !l.startsWith('#'))
  fs.writeFileSync(file.replace(/\.data$/, '.txt'), text)
  console.log(`\n== ${title} (top ${args.top} symbols, % of samples; full list in ${path.relative(process.cwd(), file.replace(/\.data$/, '.txt'))})`)
  for (const l of lines.slice(0, Number(args.top))) console.log(l.replace(/\s+$/, '').slice(0, 160))
}

log(`loading ${args.model}`)
const loadPerf = perfRecord('load')
await new Promise((r) => setTimeout(r, 500)) // let perf attach
const t0 = performance.now()
const model = await PaliGemma.load(args.model, { device: 'cpu', dtype: args.dtype, threads: Number(args.threads) })
const loadS = (performance.now() - t0) / 1e3
await loadPerf.stop()
log(`loaded in ${loadS.toFixed(1)} s`)
const { info } = model
const inputIds = promptIds(info)
const pixelValues = pixels(info.imageSize)
// Warm-up, so the profile holds no first-touch page faults.
await model.generate({ inputIds, pixelValues: pixelValues.slice(), maxNewTokens: 2 })

const prefill = perfRecord('prefill')
await new Promise((r) => setTimeout(r, 500)) // let perf attach
const n = Number(args['decode-tokens']) + 1
const t = performance.now()
let first
let last
let count = 0
let decode
for await (const _chunk of model.stream({ inputIds, pixelValues: pixelValues.slice(), maxNewTokens: n })) {
  const now = performance.now() - t
  if (count === 0) {
    first = now
    await prefill.stop()
    decode = perfRecord('decode')
  }
  last = now
  count++
}
await decode.stop()
await model.dispose()
log(`TTFT ${(first / 1e3).toFixed(2)} s (perf attached ~0.5 s before the request), decode ${((last - first) / (count - 1)).toFixed(1)} ms/token over ${count - 1} tokens`)
report(loadPerf.file, `load (${loadS.toFixed(1)} s)`)
report(prefill.file, 'prefill (vision tower + projector + Gemma prefill + first token)')
report(decode.file, `decode (${count - 1} tokens)`)
