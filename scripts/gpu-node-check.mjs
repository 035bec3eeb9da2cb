// The Node package on the GPU machine: the CUDA addon loaded through the public API, as a user
// runs it. scripts/gpu-node-check.sh starts it there; a CPU dry run works here too.
//
//   node scripts/gpu-node-check.mjs <cuda|cpu> [results.jsonl]
//
// <cuda|cpu> is where `device: 'auto'` must land (cpu: a dry run on a machine without a GPU).
// Checks, for each reference fixture: auto picks the GPU in bf16 with greedy ids identical to
// expected_bf16; f32 on the device matches the reference logits to 1e-4 and its greedy ids; an
// AbortSignal stops a stream; an { image, prompt } request gives the CPU's ids in f32. Then a
// child with no visible GPU: auto falls back with a warning that says why, 'cuda' is
// ERR_DEVICE_UNAVAILABLE. With the random real-size checkpoint of the GPU check present
// (CKPT_DIR), it also times generation through the API, which on the GPU must replay decode
// graphs (API_TIMING_DIR names another model to time), and 8 concurrent requests against one.
// Continuous batching: requests of different lengths in one batch give their solo greedy ids.
// Prints one JSON line per check and exits 1 if any failed.
import { execFileSync } from 'node:child_process'
import { appendFileSync, existsSync, readFileSync } from 'node:fs'
import { basename, join } from 'node:path'

import { pixels, promptIds } from '../benches/lib/common.mjs'
import { PaliGemma } from '../dist/index.js'
import { cudaFallbackNote, native } from '../dist/src/native.js'
import { fixture, fixtureWithTokenizer, FIXTURES, longContextFixture, repo } from '../__test__/helpers/fixtures.mjs'
import { readSafetensors } from '../__test__/helpers/safetensors.mjs'

const [expected = 'cuda', resultsFile] = process.argv.slice(2)
const rows = []
const record = (row) => {
  rows.push(row)
  const line = JSON.stringify({ check: 'node', ...row })
  console.log(line)
  if (resultsFile) appendFileSync(resultsFile, `${line}\n`)
}
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i])
const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0)

/** A child process's view when no GPU is visible (or, in a dry run, no usable driver). */
async function noGpuChild() {
  const dir = fixture(FIXTURES[0]).dir
  const script = `
    import { PaliGemma } from './dist/index.js'
    const warnings = []
    process.on('warning', (w) => warnings.push(w.code + ': ' + w.message))
    const model = await PaliGemma.load(${JSON.stringify(dir)}, { device: 'auto' })
    await new Promise((r) => setImmediate(r))
    const cuda = await PaliGemma.load(${JSON.stringify(dir)}, { device: 'cuda' }).then(() => 'loaded', (e) => e.code + ': ' + e.message)
    console.log(JSON.stringify({ device: model.info.device, fallback: model.info.deviceFallback, warnings, cuda }))
    await model.dispose()`
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: repo,
    env: { ...process.env, CUDA_VISIBLE_DEVICES: '' },
    encoding: 'utf8',
  })
  return JSON.parse(out.trim().split('\n').pop())
}

/** Median generation timings through the API on a real-size checkpoint (random weights). */
async function timeRealSize(dir, runs = 3, newTokens = 32) {
  const model = await PaliGemma.load(dir, { device: 'auto' })
  // The CPU harness's prompt and pixels (benches/lib/common.mjs), as engine_bench uses.
  const inputIds = promptIds(model.info)
  const pixelValues = pixels(model.info.imageSize)
  const request = { inputIds, pixelValues, maxNewTokens: newTokens }
  await model.generate(request) // warm-up: kernels, cuBLAS handles, the decode graph
  const samples = []
  for (let i = 0; i < runs; i++) samples.push((await model.generate(request)).timings)
  await model.dispose()
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1]
  return {
    ttftMs: median(samples.map((s) => s.prefillMs)),
    decodeMsPerToken: median(samples.map((s) => s.decodeMs / Math.max(1, s.decodeSteps))),
    decodeGraph: samples.every((s) => s.decodeGraph),
  }
}

const addon = native().addonInfo()
// A CUDA build is installed: it loaded, or it failed to load and the CPU build stands in.
const cudaInstalled = addon.cuda || cudaFallbackNote() !== undefined
let maps = ''
try {
  maps = readFileSync('/proc/self/maps', 'utf8')
} catch {}
const loaded = [...new Set(maps.split('\n').filter((l) => l.endsWith('.node')).map((l) => l.split(/\s+/).pop()))]
record({ name: 'addon', ok: expected === 'cpu' || addon.cuda, cuda: addon.cuda, file: loaded.join(', ') })

/** Runs one check; a throw (a failed load, say) is a failed row, and the checks go on. */
async function step(name, body) {
  try {
    record({ name, ...(await body()) })
  } catch (e) {
    record({ name, ok: false, error: `${e?.code ?? ''} ${e?.message ?? e}`.trim() })
  }
}

const image = readFileSync(join(repo, 'testdata', 'e2e-caption', 'image.png'))
for (const name of FIXTURES) {
  const f = fixture(name)
  const bf16Ids = readSafetensors(join(f.dir, 'expected_bf16.safetensors')).generated_ids.data
  const request = { inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: f.generatedIds.length }

  await step(`${name} auto`, async () => {
    const auto = await PaliGemma.load(f.dir, { device: 'auto' })
    const greedy = await auto.generate(request)
    await auto.dispose()
    const want = expected === 'cuda' ? bf16Ids : f.generatedIds
    return {
      // A dry run of a CUDA build on a machine without a GPU falls back, and must say why.
      ok:
        auto.info.device === expected &&
        (auto.info.deviceFallback !== undefined) === (expected === 'cpu' && cudaInstalled) &&
        same(greedy.tokenIds, want) &&
        greedy.timings.decodeGraph === (expected === 'cuda'),
      device: auto.info.device,
      dtype: auto.info.dtype,
      ids: greedy.tokenIds,
      want,
      decodeGraph: greedy.timings.decodeGraph,
      fallback: auto.info.deviceFallback,
    }
  })

  // A stream stopped by its signal after three chunks, from a copy with 8192 positions so that
  // generation cannot finish first; the model then serves the same request as before it.
  await step(`${name} abort`, async () => {
    const long = await PaliGemma.load(longContextFixture(name), { device: 'auto' })
    const before = await long.generate(request)
    const controller = new AbortController()
    let chunks = 0
    let aborted = false
    try {
      for await (const _ of long.stream({ ...request, maxNewTokens: 4000, signal: controller.signal })) {
        if (++chunks === 3) controller.abort()
      }
    } catch (e) {
      aborted = e.name === 'AbortError'
    }
    const after = await long.generate(request)
    await long.dispose()
    return { ok: aborted && chunks === 3 && same(after.tokenIds, before.tokenIds), aborted, chunks }
  })

  await step(`${name} f32`, async () => {
    const exact = await PaliGemma.load(f.dir, { device: expected, dtype: 'f32' })
    const { logits } = await exact.forward({ inputIds: f.inputIds, pixelValues: f.pixelValues })
    const prefillMaxDiff = maxDiff(logits, f.prefillLogits.data)
    const ids = (await exact.generate(request)).tokenIds
    await exact.dispose()
    return { ok: prefillMaxDiff <= 1e-4 && same(ids, f.generatedIds), prefillMaxDiff, idsMatch: same(ids, f.generatedIds) }
  })

  // The image path (decode, resize, tokenize on the worker) on the device, against the CPU.
  await step(`${name} image`, async () => {
    const dir = fixtureWithTokenizer(name)
    const ask = { image, prompt: 'caption en', maxNewTokens: 8 }
    const models = await Promise.all([PaliGemma.load(dir, { device: expected, dtype: 'f32' }), PaliGemma.load(dir, { device: 'cpu' })])
    const [a, b] = await Promise.all(models.map((m) => m.generate(ask)))
    await Promise.all(models.map((m) => m.dispose()))
    return { ok: same(a.tokenIds, b.tokenIds) && a.text === b.text, ids: a.tokenIds, cpuIds: b.tokenIds, text: a.text }
  })

  // Continuous batching on the device: requests of different lengths joining and leaving one
  // batch (on CUDA a pool of KV slots, a graph per batch-size bucket) decode the greedy ids
  // each decodes alone.
  await step(`${name} batched`, async () => {
    const [solo, batched] = await Promise.all([PaliGemma.load(f.dir, { device: expected }), PaliGemma.load(f.dir, { device: expected, maxBatch: 4 })])
    const mirrored = f.pixelValues.slice().reverse()
    const n = f.generatedIds.length
    const requests = [n, 3, n + 4, 5, 2, n].map((maxNewTokens, i) => ({ ...request, pixelValues: i % 2 ? mirrored : f.pixelValues, maxNewTokens }))
    const alone = []
    for (const r of requests) alone.push((await solo.generate(r)).tokenIds)
    const together = await Promise.all(requests.map((r) => batched.generate(r)))
    await Promise.all([solo.dispose(), batched.dispose()])
    const shared = Math.max(...together.map((o) => o.timings.batchSize))
    const replayed = together.some((o) => o.timings.decodeGraph)
    return {
      ok: together.every((o, i) => same(o.tokenIds, alone[i])) && shared > 1 && replayed === (expected === 'cuda'),
      mismatched: together.flatMap((o, i) => (same(o.tokenIds, alone[i]) ? [] : [{ request: i, ids: o.tokenIds, alone: alone[i] }])),
      batchSize: shared,
      decodeGraph: replayed,
    }
  })
}

/** Aggregate decode rate of `streams` concurrent requests against one, on a real-size checkpoint. */
async function timeBatched(dir, streams, newTokens = 32) {
  const model = await PaliGemma.load(dir, { device: 'auto', maxBatch: streams })
  const request = { inputIds: promptIds(model.info), pixelValues: pixels(model.info.imageSize), maxNewTokens: newTokens }
  const rate = async (count) => {
    const started = performance.now()
    const outs = await Promise.all(Array.from({ length: count }, () => model.generate(request)))
    return { tokS: (count * newTokens * 1000) / (performance.now() - started), graph: outs.every((o) => o.timings.decodeGraph) }
  }
  await rate(streams) // warm-up: every bucket's graph on the way up
  const one = await rate(1)
  const many = await rate(streams)
  await model.dispose()
  return { streams, oneTokS: one.tokS, manyTokS: many.tokS, ratio: many.tokS / one.tokS, decodeGraph: one.graph && many.graph }
}

if (addon.cuda) {
  await step('no visible GPU', async () => {
    const child = await noGpuChild()
    const warned = child.warnings.some((w) => w.startsWith('PALIGEMMA_CPU_FALLBACK') && child.fallback && w.includes(child.fallback))
    return { ok: child.device === 'cpu' && warned && child.cuda.startsWith('ERR_DEVICE_UNAVAILABLE'), ...child }
  })
}

// API_TIMING_DIR: another model to time (a CPU dry run points it at a fixture).
const timed = process.env.API_TIMING_DIR ?? join(process.env.CKPT_DIR ?? '/tmp/pg-checkpoints', 'pg1-3b-224')
if ((expected === 'cuda' || process.env.API_TIMING_DIR) && existsSync(join(timed, 'model.safetensors'))) {
  await step(`${basename(timed)} b1 API`, async () => {
    const timings = await timeRealSize(timed)
    // On the GPU every measured run must have replayed its decode steps from a graph.
    return { ok: timings.decodeGraph === (expected === 'cuda'), ...timings }
  })
  await step(`${basename(timed)} b8 API`, async () => {
    // Wall time per request, prefills included: a lower bound on the decode-only ratio.
    const batched = await timeBatched(timed, 8)
    return { ok: batched.decodeGraph === (expected === 'cuda') && batched.ratio > 1, ...batched }
  })
}

const failed = rows.filter((r) => !r.ok)
console.log(`\n${'check'.padEnd(28)} result`)
for (const r of rows) {
  const detail =
    'ttftMs' in r
      ? `TTFT ${r.ttftMs.toFixed(1)} ms, decode ${r.decodeMsPerToken.toFixed(2)} ms/token, graph ${r.decodeGraph}`
      : 'manyTokS' in r
        ? `${r.streams} streams ${r.manyTokS.toFixed(0)} tok/s against 1 stream ${r.oneTokS.toFixed(0)} (${r.ratio.toFixed(2)}x), graph ${r.decodeGraph}`
        : r.ok
          ? 'ok'
          : 'FAILED'
  console.log(`${r.name.padEnd(28)} ${detail}`)
}
process.exit(failed.length === 0 ? 0 : 1)
