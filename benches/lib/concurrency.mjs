// The continuous-batching benchmark (`npm run bench -- --concurrency 1,2,4,8,16`; issue 20).
//
// For each concurrency level N, a fresh child process loads the model once and sends N
// concurrent streams through the public API (all at once, or arriving as a Poisson process with
// `--arrival poisson --rate R` requests per second). Every chunk's arrival time is recorded. The
// figures per level:
// - aggregate decode tok/s: tokens delivered while every stream was decoding (from the last
//   stream's first token to the first stream's last token) per second of that window; with
//   Poisson arrivals, where streams may never all overlap, all tokens after each stream's first
//   over the span from the first first-token to the last token;
// - TTFT p50/p99 (submission to first chunk) and inter-token latency p50/p99 (gaps between a
//   stream's chunks; a gap that spans another request's prefill is the stall the batch pays);
// - peak RSS of the child, and its RSS after the load;
// - the batch size the requests ran in (timings.batchSize).
// `throughputRatio` is a level's aggregate tok/s over level 1's.

import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { prng } from '../../__test__/helpers/safetensors-write.mjs'
import { dtypeOptions, log, pixels, promptIds, round } from './common.mjs'

const RUN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'run.mjs')

/** Percentile `p` (0–100) of `values`, nearest rank. */
function percentile(values, p) {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

/** A seeded exponential sampler, so Poisson arrivals repeat run to run. */
function exponential(rate, seed = 1) {
  const uniform = prng(seed)
  return () => -Math.log(1 - uniform()) / rate
}

/** Child side: one level. Prints one JSON line. */
export async function childConcurrency(args) {
  const { PaliGemma } = await import('../../dist/index.js')
  const n = Number(args.concurrency)
  const newTokens = Number(args['new-tokens'] ?? 32)
  const dtype = args.dtype ?? 'f32'
  const arrival = args.arrival ?? 'burst'
  const rate = Number(args.rate ?? 1)
  const t0 = performance.now()
  const model = await PaliGemma.load(args.model, { device: 'cpu', ...dtypeOptions(dtype), threads: Number(args.threads) })
  const loadMs = performance.now() - t0
  const rssAfterLoadMb = process.memoryUsage().rss / 2 ** 20
  const { info } = model
  const inputIds = promptIds(info)
  // Warm-up: one short request alone.
  for await (const _ of model.stream({ inputIds, pixelValues: pixels(info.imageSize), maxNewTokens: 2 })) void _

  const next = exponential(rate)
  const delays = []
  let at = 0
  for (let i = 0; i < n; i++) {
    delays.push(arrival === 'poisson' ? at * 1000 : 0)
    at += next()
  }
  const start = performance.now()
  const streams = await Promise.all(
    delays.map(async (delay, i) => {
      if (delay > 0) await new Promise((r) => setTimeout(r, delay))
      const submitted = performance.now()
      const times = []
      // Different images, so that no two rows are the same computation.
      const stream = model.stream({ inputIds, pixelValues: pixels(info.imageSize, i), maxNewTokens: newTokens })
      for await (const _chunk of stream) times.push(performance.now())
      const result = await stream.result
      return { submitted, times, batchSize: result.timings.batchSize, queuedMs: result.timings.queuedMs, finish: result.finishReason }
    }),
  )
  const end = performance.now()
  await model.dispose()

  const ttft = streams.map((s) => s.times[0] - s.submitted)
  const gaps = streams.flatMap((s) => s.times.slice(1).map((t, i) => t - s.times[i]))
  const firsts = streams.map((s) => s.times[0])
  const lasts = streams.map((s) => s.times.at(-1))
  let windowStart = Math.max(...firsts)
  let windowEnd = Math.min(...lasts)
  let tokens = streams.reduce((sum, s) => sum + s.times.filter((t) => t > windowStart && t <= windowEnd).length, 0)
  if (arrival === 'poisson' || windowEnd <= windowStart || tokens === 0) {
    windowStart = Math.min(...firsts)
    windowEnd = Math.max(...lasts)
    tokens = streams.reduce((sum, s) => sum + s.times.length - 1, 0)
  }
  console.log(
    JSON.stringify({
      concurrency: n,
      dtype,
      arrival,
      ...(arrival === 'poisson' ? { rate } : {}),
      new_tokens: newTokens,
      load_ms: round(loadMs, 0),
      wall_s: round((end - start) / 1000, 2),
      aggregate_tok_s: round((tokens * 1000) / (windowEnd - windowStart), 3),
      ttft_p50_ms: round(percentile(ttft, 50), 0),
      ttft_p99_ms: round(percentile(ttft, 99), 0),
      itl_p50_ms: round(percentile(gaps, 50), 1),
      itl_p99_ms: round(percentile(gaps, 99), 1),
      itl_max_ms: round(Math.max(...gaps, 0), 1),
      batch_sizes: streams.map((s) => s.batchSize),
      peak_rss_mb: round(process.resourceUsage().maxRSS / 1024, 0),
      rss_after_load_mb: round(rssAfterLoadMb, 0),
      finish: [...new Set(streams.map((s) => s.finish))],
      threads: Number(args.threads),
    }),
  )
}

/** Parent side: every level of every dtype, each in its own child; returns the levels. */
export async function runConcurrency({ modelDir, levels, dtypes, threads, newTokens, arrival, rate, timeoutS }) {
  const all = []
  for (const dtype of dtypes) {
    const levelsOut = []
    for (const n of levels) {
      log(`concurrency ${n}, ${dtype}, ${arrival}${arrival === 'poisson' ? ` at ${rate}/s` : ''}: ${path.basename(modelDir)}`)
      const childArgs = [RUN, '--child', 'concurrency', '--model', modelDir, '--dtype', dtype, '--threads', String(threads), '--new-tokens', String(newTokens), '--concurrency', String(n), '--arrival', arrival, '--rate', String(rate)]
      const line = await new Promise((resolve, reject) => {
        const child = spawn(process.execPath, childArgs, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RAYON_NUM_THREADS: String(threads), CANDLE_NUM_THREADS: String(threads) } })
        let out = ''
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutS * 1000)
        child.stdout.on('data', (d) => (out += d))
        child.on('close', (code) => {
          clearTimeout(timer)
          const last = out.trim().split('\n').at(-1)
          code === 0 && last ? resolve(JSON.parse(last)) : reject(new Error(`concurrency ${n} ${dtype}: child exited with ${code}`))
        })
      })
      levelsOut.push(line)
      log(JSON.stringify(line))
    }
    const base = levelsOut.find((l) => l.concurrency === 1)?.aggregate_tok_s
    for (const l of levelsOut) l.throughputRatio = base ? round(l.aggregate_tok_s / base, 2) : null
    all.push(...levelsOut)
  }
  return all
}

/** The markdown table of a concurrency run. */
export function concurrencyTable(levels) {
  const rows = [
    '| dtype | streams | aggregate decode tok/s | × one stream | TTFT p50 / p99 s | inter-token p50 / p99 ms | peak RSS MB | batch sizes |',
    '|---|---:|---:|---:|---:|---:|---:|---|',
  ]
  for (const l of levels) {
    const sizes = [...new Set(l.batch_sizes)].sort((a, b) => a - b).join(', ')
    rows.push(
      `| ${l.dtype} | ${l.concurrency} | ${l.aggregate_tok_s} | ${l.throughputRatio ?? '—'} | ${(l.ttft_p50_ms / 1000).toFixed(1)} / ${(l.ttft_p99_ms / 1000).toFixed(1)} | ${l.itl_p50_ms} / ${l.itl_p99_ms} | ${l.peak_rss_mb} | ${sizes} |`,
    )
  }
  return rows.join('\n')
}
