// Continuous batching (issue 20) through the public API: concurrent requests of every kind on
// one model share decode steps, and each gets exactly what it gets alone; aborting or leaving
// one never disturbs the others.
import test from 'ava'

import { PaliGemma } from '../dist/index.js'
import { fixture, fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { noisyPng, onePixelPng } from './helpers/png.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }
const dir = fixtureWithTokenizer('pg1-tiny-a')

/** The 32 requests: kinds, sampling, lengths and images mixed. */
function mixedRequests() {
  const images = [onePixelPng(), noisyPng(24), noisyPng(40)]
  return Array.from({ length: 32 }, (_, i) => {
    const sampling = i % 3 === 0 ? {} : { temperature: 0.8 + (i % 4) / 10, seed: 1000 + i, topK: 50 }
    const maxNewTokens = 6 + ((i * 7) % 23)
    switch (i % 8) {
      case 0:
      case 1:
        return { kind: 'generate', request: { ...base, ...sampling, maxNewTokens } }
      case 2:
        return { kind: 'stream', request: { ...base, ...sampling, maxNewTokens } }
      case 3:
        return { kind: 'forward' }
      case 4:
        return { kind: 'image', request: { image: images[i % 3], prompt: 'caption en', ...sampling, maxNewTokens } }
      // Greedy, so that they always reach their third token (a sampled run may end sooner).
      case 5:
        return { kind: 'abort', request: { ...base, maxNewTokens: 400 } }
      case 6:
        return { kind: 'break', request: { ...base, maxNewTokens: 400 } }
      default:
        return { kind: 'detect', image: images[i % 3], options: { ...sampling, maxNewTokens } }
    }
  })
}

/** Runs one request; `abort`/`break` requests stop after 3 tokens. */
async function run(model, { kind, request, image, options }) {
  switch (kind) {
    case 'generate':
    case 'image': {
      const r = await model.generate(request)
      return { ids: Array.from(r.tokenIds), finishReason: r.finishReason, batchSize: r.timings.batchSize }
    }
    case 'stream': {
      const ids = []
      const stream = model.stream(request)
      for await (const chunk of stream) ids.push(chunk.tokenId)
      const r = await stream.result
      return { ids, finishReason: r.finishReason, batchSize: r.timings.batchSize }
    }
    case 'forward':
      return { logits: Buffer.from((await model.forward(base)).logits.buffer).toString('base64') }
    case 'abort': {
      const controller = new AbortController()
      const ids = []
      try {
        for await (const chunk of model.stream({ ...request, signal: controller.signal })) {
          ids.push(chunk.tokenId)
          if (ids.length === 3) controller.abort()
        }
        return { ids, error: 'not aborted' }
      } catch (error) {
        return { ids, error: error.name }
      }
    }
    case 'break': {
      const ids = []
      const stream = model.stream(request)
      for await (const chunk of stream) {
        ids.push(chunk.tokenId)
        if (ids.length === 3) break
      }
      const r = await stream.result
      return { ids, finishReason: r.finishReason, resultIds: Array.from(r.tokenIds) }
    }
    case 'detect':
      return { detections: JSON.stringify(await model.detect(image, 'cat ; dog', options)) }
  }
  throw new Error(kind)
}

test('32 concurrent mixed requests equal their sequential runs, aborted and broken ones included', async (t) => {
  const model = await PaliGemma.load(dir)
  try {
    const requests = mixedRequests()
    const sequential = []
    for (const r of requests) sequential.push(await run(model, r))
    const concurrent = await Promise.all(requests.map((r) => run(model, r)))
    requests.forEach((r, i) => {
      const [got, want] = [concurrent[i], sequential[i]]
      const what = `request ${i} (${r.kind})`
      if (r.kind === 'abort') {
        t.is(got.error, 'AbortError', what)
        t.deepEqual(got.ids, want.ids, `${what}: the tokens before the abort`)
      } else if (r.kind === 'break') {
        t.is(got.finishReason, 'abort', what)
        // The result holds what was generated before the break took effect: the tokens read,
        // and any the model had produced ahead of the reader.
        t.deepEqual(got.resultIds.slice(0, 3), got.ids, what)
        t.deepEqual(got.ids, want.ids, what)
      } else {
        const { batchSize: _a, ...gotRest } = got
        const { batchSize: _b, ...wantRest } = want
        t.deepEqual(gotRest, wantRest, what)
      }
    })
    const sizes = concurrent.map((c) => c.batchSize ?? 0)
    t.true(sequential.every((s) => s.batchSize === undefined || s.batchSize === 1), 'sequential runs ran alone')
    t.true(Math.max(...sizes) > 4, `requests shared decode steps (largest batch ${Math.max(...sizes)})`)
    t.log(`largest batch ${Math.max(...sizes)} of ${model.info.maxBatch}`)
  } finally {
    await model.dispose()
  }
})

test('maxBatch and kvCacheBytes are validated, reported, and bound the batch', async (t) => {
  for (const [option, value] of [['maxBatch', 0], ['maxBatch', 1.5], ['maxBatch', -1], ['maxBatch', '4'], ['kvCacheBytes', 0], ['kvCacheBytes', Number.NaN]]) {
    const error = await t.throwsAsync(PaliGemma.load(f.dir, { [option]: value }))
    t.is(error.code, 'ERR_INVALID_ARGUMENT', `${option}: ${value}`)
    t.regex(error.message, new RegExp(`\`${option}\``))
  }
  const defaults = await PaliGemma.load(f.dir)
  t.is(defaults.info.maxBatch, 16)
  t.is(defaults.info.kvCacheBytes, 4 * 2 ** 30)
  await defaults.dispose()
  // A budget of one request's cache: requests run one at a time, in order, and all complete.
  const perPosition = 2 * 2 * 1 * 16 * 4 // the fixture's layers, K and V, kv heads, head_dim, f32
  const small = await PaliGemma.load(f.dir, { kvCacheBytes: perPosition * (f.inputIds.length + 12) })
  try {
    const results = await Promise.all(Array.from({ length: 4 }, () => small.generate({ ...base, maxNewTokens: 12 })))
    t.true(results.every((r) => r.timings.batchSize === 1), results.map((r) => r.timings.batchSize).join(','))
    t.true(results.every((r) => Array.from(r.tokenIds).join() === Array.from(f.generatedIds).join()))
    t.true(results[3].timings.queuedMs > 0)
  } finally {
    await small.dispose()
  }
})

test('prefillShare stages joining prefills between decode steps with the same outputs, and is validated', async (t) => {
  for (const value of [-1, Number.NaN, '1', 2000]) {
    const error = await t.throwsAsync(PaliGemma.load(f.dir, { prefillShare: value }))
    t.is(error.code, 'ERR_INVALID_ARGUMENT', `prefillShare: ${value}`)
    t.regex(error.message, /`prefillShare`/)
  }
  // 0: one layer per stage, so every joining request's prefill spans several steps.
  const model = await PaliGemma.load(dir, { prefillShare: 0 })
  try {
    const requests = Array.from({ length: 8 }, (_, i) => ({ ...base, maxNewTokens: 10 + i, ...(i % 2 ? { temperature: 0.9, seed: 40 + i } : {}) }))
    const sequential = []
    for (const r of requests) sequential.push(await model.generate(r))
    const concurrent = await Promise.all(requests.map((r) => model.generate(r)))
    concurrent.forEach((got, i) => t.deepEqual(Array.from(got.tokenIds), Array.from(sequential[i].tokenIds), `request ${i}`))
    t.true(Math.max(...concurrent.map((r) => r.timings.batchSize)) > 1, 'requests shared decode steps')
  } finally {
    await model.dispose()
  }
})
