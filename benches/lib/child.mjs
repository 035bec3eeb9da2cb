// The child process that runs this engine through the package's public Node API
// (`node benches/run.mjs --child paligemma ...`).

import fs from 'node:fs'
import path from 'node:path'
import { dtypeOptions, median, pixels, promptIds, round } from './common.mjs'
import { versions } from './machine.mjs'
import { addonPath } from './setup.mjs'

export async function childPaligemma(args) {
  const { PaliGemma } = await import('../../dist/index.js')
  const threads = Number(args.threads)
  const newTokens = Number(args['new-tokens'] ?? 32)
  const runs = Number(args.runs ?? 3)
  const warmup = Number(args.warmup ?? 1)
  const t0 = performance.now()
  const dtype = args.dtype ?? 'f32'
  const addon = addonPath()
  const addonStat = addon ? fs.statSync(addon) : undefined
  const model = await PaliGemma.load(args.model, { device: 'cpu', ...dtypeOptions(dtype), threads })
  const loadMs = performance.now() - t0
  const rssAfterLoadMb = process.memoryUsage().rss / 2 ** 20
  const { info } = model
  const inputIds = promptIds(info)

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
