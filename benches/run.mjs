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
// This file is also the child that runs the engine: `node benches/run.mjs --child paligemma ...`
// (benches/lib/child.mjs). The rest of the harness: lib/machine.mjs (CPU accounting, waiting for
// a quiet machine), lib/setup.mjs (builds, probes, checkpoints), lib/report.mjs (rounds, ratios,
// markdown), lib/common.mjs (constants, small helpers).

import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ENGINES, HERE, MODELS, ROOT, log, round } from './lib/common.mjs'
import { cpuDelta, cpuStat, machineInfo, versions, waitQuiet } from './lib/machine.mjs'
import { buildCandlePeer, cacheDir, checkPackage, ensureCheckpoint, paramCount, ttftFlops } from './lib/setup.mjs'
import { childPaligemma } from './lib/child.mjs'
import { markdown, pooled, ratios, rotate, writeResults } from './lib/report.mjs'
import { childConcurrency, concurrencyTable, runConcurrency } from './lib/concurrency.mjs'

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
  concurrency: { type: 'string' },
  arrival: { type: 'string', default: 'burst' },
  rate: { type: 'string', default: '0.2' },
  // child mode
  'also-dtypes': { type: 'string' },
  dtypes: { type: 'string' },
  'peer-dtypes': { type: 'string' },
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
  --also-dtypes a,b     extra paligemma rows with these load dtypes (e.g. bf16,q8_0,q4k; q8_0:bf16 is
                        q8_0 with the vision tower in bf16, visionDtype); the peers stay f32
  --peer-dtypes a,b     transformers rows in these dtypes (default f32; e.g. f32,bf16: bf16 is what a
                        user with a bf16-capable CPU would pick, oneDNN's kernels)
  --wait-only           only wait for a quiet machine (same rule, --max-wait cap), then exit
  --concurrency 1,2,4   continuous batching instead: that many concurrent streams per level, each
                        level in a fresh child (lib/concurrency.mjs); f32 plus --also-dtypes
  --dtypes a,b          with --concurrency: exactly these load dtypes (e.g. q8_0 alone)
  --arrival poisson     with --concurrency: requests arrive at --rate R per second (default: all at once)
Env: PALIGEMMA_BENCH_CACHE (checkpoints, logs, results; default benches/.cache),
     PALIGEMMA_BENCH_PYTHON (default benches/.venv/bin/python).`


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
  } else if (engine === 'transformers' || engine.startsWith('transformers-')) {
    const dtype = engine === 'transformers' ? 'f32' : engine.slice('transformers-'.length)
    cmd = ctx.python
    args = [path.join(HERE, 'peers', 'transformers_peer.py'), '--model', dir, '--device', 'cpu', '--dtype', dtype, '--threads', String(ctx.threads),
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

/** `--concurrency`: the continuous-batching benchmark on PaliGemma-3B-224 (or --model-dir). */
async function concurrencyMain(args) {
  const levels = args.concurrency.split(',').map(Number)
  if (levels.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--concurrency takes positive integers, got ${args.concurrency}`)
  if (!['burst', 'poisson'].includes(args.arrival)) throw new Error(`--arrival is burst or poisson, got ${args.arrival}`)
  checkPackage()
  const modelDir = args['model-dir'] ?? process.env.PALIGEMMA_BENCH_MODEL_DIR
  const dir = modelDir ? path.resolve(modelDir) : await ensureCheckpoint('pg1-3b-224', 'f32')
  if (!args['no-wait']) await waitQuiet({ maxLoad: 1.0, maxBusy: 0.5, holdS: 60, capS: Number(args['max-wait'] ?? 600), stepS: 10 })
  const started = new Date()
  const results = await runConcurrency({
    modelDir: dir,
    levels,
    dtypes: args.dtypes ? args.dtypes.split(',') : ['f32', ...(args['also-dtypes'] ? args['also-dtypes'].split(',') : [])],
    threads: Number(args.threads),
    newTokens: Number(args['new-tokens'] ?? 32),
    arrival: args.arrival,
    rate: Number(args.rate),
    timeoutS: Number(args.timeout ?? 1800),
  })
  console.log(`\n${concurrencyTable(results)}\n`)
  console.log(`machine: ${JSON.stringify(machineInfo())}; started ${started.toISOString()}; ${round((Date.now() - started) / 1000, 0)} s`)
  if (args.json) console.log(JSON.stringify({ model: path.basename(dir), command: `npm run bench -- ${process.argv.slice(2).join(' ')}`, levels: results }))
}

async function main() {
  const { values: args } = parseArgs({ options: OPTIONS, allowPositionals: false })
  if (args.help) {
    console.log(USAGE)
    return
  }
  if (args.child === 'paligemma') return childPaligemma(args)
  if (args.child === 'concurrency') return childConcurrency(args)
  if (args.child) throw new Error(`unknown child ${args.child}`)
  if (process.platform !== 'linux') throw new Error('the harness reads /proc: Linux only')
  if (args['wait-only']) {
    const w = await waitQuiet({ maxLoad: 1.0, maxBusy: 0.5, holdS: 60, capS: Number(args['max-wait'] ?? 600), stepS: 10 })
    console.log(JSON.stringify(w))
    process.exitCode = w.quiet ? 0 : 2
    return
  }

  if (args.concurrency) return concurrencyMain(args)

  const quick = args.quick
  const threads = Number(args.threads)
  const modelDir = args['model-dir'] ?? process.env.PALIGEMMA_BENCH_MODEL_DIR
  const engines = args.engines ? args.engines.split(',') : [...ENGINES]
  for (const e of engines) if (!ENGINES.includes(e)) throw new Error(`unknown engine ${e}`)
  // Extra rows of this engine in other load dtypes (quantized decoders): after the f32 row.
  const also = args['also-dtypes'] ? args['also-dtypes'].split(',').map((d) => `paligemma-${d}`) : []
  engines.splice(engines.includes('paligemma') ? engines.indexOf('paligemma') + 1 : 0, 0, ...also)
  // transformers in each --peer-dtypes dtype: `transformers` (f32), then `transformers-bf16`, ….
  if (engines.includes('transformers') && args['peer-dtypes']) {
    const peerDtypes = args['peer-dtypes'].split(',')
    for (const d of peerDtypes) if (!['f32', 'bf16', 'f16'].includes(d)) throw new Error(`--peer-dtypes takes f32, bf16 or f16, got ${d}`)
    engines.splice(engines.indexOf('transformers'), 1, ...peerDtypes.map((d) => (d === 'f32' ? 'transformers' : `transformers-${d}`)))
  }
  const names = modelDir ? [path.basename(path.resolve(modelDir))] : args.models ? args.models.split(',') : quick ? ['pg1-3b-224'] : Object.keys(MODELS)
  for (const n of names) if (!modelDir && !MODELS[n]) throw new Error(`unknown model ${n}`)
  const timeoutS = Number(args.timeout ?? 1800)
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`
  const started = new Date()

  const pkg = engines.some((e) => e.startsWith('paligemma')) ? checkPackage() : {}
  const python = process.env.PALIGEMMA_BENCH_PYTHON ?? path.join(HERE, '.venv', 'bin', 'python')
  if (engines.some((e) => e.startsWith('transformers')) && !fs.existsSync(python)) throw new Error(`${python} is missing: run benches/setup.sh (or set PALIGEMMA_BENCH_PYTHON)`)
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
