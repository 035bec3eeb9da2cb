#!/usr/bin/env node
// `npm run bench:batch`: images per second for `paligemma batch` at concurrency 1 and 8, and
// for BullMQ workers (1 against 2 worker processes, each with --threads 1) with a real Redis in
// the loop (issue 22).
//
//   npm run bench:batch -- [--images 8] [--new-tokens 8] [--concurrency 1,8] [--threads 2]
//                          [--worker-dtype q8_0] [--worker-concurrency 1] [--model-dir DIR]
//                          [--skip-batch] [--skip-workers] [--json]
//
// The model is the real-size random PaliGemma-3B-224 of the CPU harness (benches/lib/setup.mjs)
// with PaliGemma's tokenizer; every image is `caption en` on its own synthetic PNG, capped at
// --new-tokens. `batch` reports images/s after the model is loaded (its own summary line). The
// worker runs load first, then the jobs are enqueued, and the clock runs from the first job
// added to the last completed. Workers use --worker-dtype (q8_0: two f32 copies of the model
// would not fit in 24 GB) and take --worker-concurrency jobs each (1: on the CPU an image's
// prefill dominates and is not shared, and a worker that takes 8 jobs at once leaves the other
// idle).

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'

import { noisyPng } from '../__test__/helpers/png.mjs'
import { startRedis } from '../__test__/helpers/redis.mjs'
import { ROOT, log, round } from './lib/common.mjs'
import { checkpointWithTokenizer } from './lib/setup.mjs'

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '8' },
    'new-tokens': { type: 'string', default: '8' },
    concurrency: { type: 'string', default: '1,8' },
    threads: { type: 'string', default: '2' },
    'worker-dtype': { type: 'string', default: 'q8_0' },
    'worker-concurrency': { type: 'string', default: '1' },
    'model-dir': { type: 'string' },
    'skip-workers': { type: 'boolean', default: false },
    'skip-batch': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
})

const CLI = path.join(ROOT, 'dist', 'src', 'cli.js')
const env = (threads) => ({ ...process.env, RAYON_NUM_THREADS: String(threads), CANDLE_NUM_THREADS: String(threads), PALIGEMMA_NO_CUDA: '1' })

function run(argv, threads) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: env(threads) })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    child.stdout.resume()
    child.once('exit', (code) => (code === 0 ? resolve(stderr) : reject(new Error(`paligemma ${argv[0]} exited ${code}: ${stderr}`))))
  })
}

async function batchLevel(dir, images, concurrency, threads, newTokens) {
  const out = path.join(os.tmpdir(), `paligemma-bench-batch-${process.pid}-${concurrency}.jsonl`)
  fs.rmSync(out, { force: true })
  const stderr = await run(['batch', '--model', dir, '--device', 'cpu', '--threads', String(threads), '-q', '-n', String(newTokens), '--concurrency', String(concurrency), '--out', out, images], threads)
  const match = /(\d+) images in ([\d.]+) s \(([\d.]+) images\/s\), (\d+) failed/.exec(stderr)
  if (!match || match[4] !== '0') throw new Error(`unexpected batch summary: ${stderr}`)
  fs.rmSync(out, { force: true })
  // The summary's rate has two decimals; recompute it from the count and the seconds.
  return { images: Number(match[1]), seconds: Number(match[2]), images_per_s: round(Number(match[1]) / Number(match[2]), 4) }
}

async function workerLevel(dir, imagePaths, workers, dtype, concurrency, newTokens, redis, queue) {
  const children = []
  for (let i = 0; i < workers; i++) {
    const child = spawn(process.execPath, [CLI, 'worker', '--model', dir, '--device', 'cpu', '--dtype', dtype, '--threads', '1', '--concurrency', String(concurrency), '--redis', redis.url, '--queue', queue, '-q'], { stdio: ['ignore', 'pipe', 'inherit'], env: env(1) })
    await new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        if (/worker on queue/.test(out)) resolve()
      })
      child.once('exit', (code) => reject(new Error(`worker exited ${code}`)))
    })
    children.push(child)
  }
  const { enqueueJobs } = await import('../dist/queue.js')
  const { Queue } = await import('bullmq')
  const handle = new Queue(queue, { connection: { host: '127.0.0.1', port: redis.port } })
  const started = performance.now()
  await enqueueJobs({ connection: redis.url, queue }, imagePaths.map((p) => ({ task: 'caption', image: { path: p }, options: { maxNewTokens: newTokens } })))
  let counts
  do {
    await new Promise((r) => setTimeout(r, 200))
    counts = await handle.getJobCounts('completed', 'failed')
  } while (counts.completed + counts.failed < imagePaths.length)
  const seconds = (performance.now() - started) / 1000
  await handle.close()
  await Promise.all(children.map((c) => new Promise((resolve) => (c.once('exit', resolve), c.kill('SIGTERM')))))
  if (counts.failed > 0) throw new Error(`${counts.failed} jobs failed`)
  return { images: imagePaths.length, seconds: round(seconds, 1), images_per_s: round(imagePaths.length / seconds, 3) }
}

async function main() {
  const n = Number(args.images)
  const newTokens = Number(args['new-tokens'])
  const threads = Number(args.threads)
  const dir = args['model-dir'] ? path.resolve(args['model-dir']) : await checkpointWithTokenizer()
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'paligemma-bench-images-'))
  const imagePaths = Array.from({ length: n }, (_, i) => {
    const p = path.join(folder, `img${String(i).padStart(4, '0')}.png`)
    fs.writeFileSync(p, noisyPng(64 + i))
    return p
  })
  const result = { model: path.basename(dir), images: n, new_tokens: newTokens, batch: [], workers: [] }
  for (const concurrency of args['skip-batch'] ? [] : args.concurrency.split(',').map(Number)) {
    log(`batch, concurrency ${concurrency}, ${threads} threads`)
    result.batch.push({ concurrency, threads, ...(await batchLevel(dir, folder, concurrency, threads, newTokens)) })
    log(JSON.stringify(result.batch.at(-1)))
  }
  if (!args['skip-workers']) {
    const redis = await startRedis()
    try {
      for (const workers of [1, 2]) {
        log(`${workers} worker process(es), --threads 1, ${args['worker-dtype']}`)
        const concurrency = Number(args['worker-concurrency'])
        result.workers.push({ workers, dtype: args['worker-dtype'], concurrency, ...(await workerLevel(dir, imagePaths, workers, args['worker-dtype'], concurrency, newTokens, redis, `bench${workers}`)) })
        log(JSON.stringify(result.workers.at(-1)))
      }
    } finally {
      await redis.stop()
    }
  }
  fs.rmSync(folder, { recursive: true, force: true })
  const base = result.batch[0]?.images_per_s
  if (result.batch.length) console.log('| paligemma batch | images/s | ÷ concurrency 1 |')
  if (result.batch.length) console.log('|---|---:|---:|')
  for (const r of result.batch) console.log(`| concurrency ${r.concurrency}, ${r.threads} threads, f32 | ${r.images_per_s} | ${round(r.images_per_s / base, 2)} |`)
  if (result.workers.length) {
    const one = result.workers[0].images_per_s
    console.log('\n| BullMQ workers (Redis in the loop) | images/s | ÷ 1 worker |')
    console.log('|---|---:|---:|')
    for (const r of result.workers) console.log(`| ${r.workers} × paligemma worker --threads 1 --concurrency ${r.concurrency}, ${r.dtype} | ${r.images_per_s} | ${round(r.images_per_s / one, 2)} |`)
  }
  if (args.json) console.log(JSON.stringify(result))
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
