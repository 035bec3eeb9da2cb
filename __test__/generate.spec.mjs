// Sampling, cancellation, concurrency and event-loop behaviour of generation.
import test from 'ava'

import { AbortError, PaliGemma, PaliGemmaError } from '../dist/index.js'
import { fixture, longContextFixture, sleep } from './helpers/fixtures.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }
const loaded = PaliGemma.load(f.dir)

test.after.always(async () => {
  await (await loaded).dispose()
})

test('the same seed gives the same tokens; another seed differs', async (t) => {
  const model = await loaded
  const request = { ...base, temperature: 1, maxNewTokens: 64 }
  const a = await model.generate({ ...request, seed: 42 })
  const b = await model.generate({ ...request, seed: 42 })
  const c = await model.generate({ ...request, seed: 43 })
  t.is(a.seed, 42)
  t.deepEqual(a.tokenIds, b.tokenIds)
  t.notDeepEqual(a.tokenIds, c.tokenIds)
  t.true(a.tokenIds.length > 8)
  const streamed = []
  for await (const chunk of model.stream({ ...request, seed: 42 })) streamed.push(chunk.tokenId)
  t.deepEqual(streamed, a.tokenIds)
})

test('top-k, top-p and repetition penalty are applied natively', async (t) => {
  const model = await loaded
  const topK1 = await model.generate({ ...base, temperature: 5, topK: 1, seed: 7, maxNewTokens: 12 })
  t.deepEqual(topK1.tokenIds, f.generatedIds, 'top-k 1 is greedy')
  const penalised = await model.generate({ ...base, repetitionPenalty: 5, maxNewTokens: 12 })
  t.notDeepEqual(penalised.tokenIds, f.generatedIds)
  const nucleus = await model.generate({ ...base, temperature: 1, topP: 0.5, seed: 1, maxNewTokens: 12 })
  t.is(nucleus.tokenIds.length > 0, true)
})

test('without a seed, each request draws a random one and reports it', async (t) => {
  const model = await loaded
  const a = await model.generate({ ...base, temperature: 1, maxNewTokens: 32 })
  t.true(Number.isSafeInteger(a.seed) && a.seed >= 0)
  const again = await model.generate({ ...base, temperature: 1, maxNewTokens: 32, seed: a.seed })
  t.deepEqual(again.tokenIds, a.tokenIds)
})

test('aborting mid-stream throws AbortError and the model keeps working', async (t) => {
  const model = await loaded
  const controller = new AbortController()
  const stream = model.stream({ ...base, maxNewTokens: 400, signal: controller.signal })
  const seen = []
  const error = await t.throwsAsync(async () => {
    for await (const chunk of stream) {
      seen.push(chunk.tokenId)
      if (seen.length === 2) controller.abort()
    }
  })
  t.is(error.name, 'AbortError')
  t.is(error.code, 'ABORT_ERR')
  t.true(error instanceof AbortError && error instanceof PaliGemmaError)
  t.is(seen.length, 2, 'no chunk is yielded after the abort')
  await t.throwsAsync(stream.result, { name: 'AbortError' })
  const after = await model.generate({ ...base, maxNewTokens: 12 })
  t.deepEqual(after.tokenIds, f.generatedIds)
})

test('aborting generate() rejects with AbortError within a decode step', async (t) => {
  const model = await loaded
  const controller = new AbortController()
  const reason = new Error('user gave up')
  const pending = model.generate({ ...base, maxNewTokens: 480, signal: controller.signal })
  await sleep(20)
  const abortedAt = performance.now()
  controller.abort(reason)
  const error = await t.throwsAsync(pending, { name: 'AbortError', code: 'ABORT_ERR' })
  t.is(error.cause, reason)
  t.true(performance.now() - abortedAt < 500, 'stops promptly')
})

test('an already-aborted signal rejects without running', async (t) => {
  const model = await loaded
  const signal = AbortSignal.abort()
  await t.throwsAsync(model.generate({ ...base, signal }), { name: 'AbortError' })
  await t.throwsAsync(model.forward({ ...base, signal }), { name: 'AbortError' })
  const stream = model.stream({ ...base, signal })
  await t.throwsAsync(async () => {
    for await (const _ of stream) t.fail('no chunk expected')
  }, { name: 'AbortError' })
})

test('aborting a queued request removes it without waiting for the running one', async (t) => {
  const model = await loaded
  let longDone = false
  const long = model.generate({ ...base, maxNewTokens: 480 }).then((r) => {
    longDone = true
    return r
  })
  const controller = new AbortController()
  const queued = model.generate({ ...base, maxNewTokens: 12, signal: controller.signal })
  const queuedForward = model.forward({ ...base, signal: controller.signal })
  controller.abort()
  await t.throwsAsync(queued, { name: 'AbortError' })
  await t.throwsAsync(queuedForward, { name: 'AbortError' })
  t.false(longDone, 'the queued requests were settled before the running one finished')
  const result = await long
  t.true(result.tokenIds.length > 12)
})

test('breaking out of for-await cancels the request', async (t) => {
  // The same weights with room for 4000 tokens. With the fixture's 480 (its whole context) a
  // loaded machine can let the worker finish before the break reaches it, as it once did to the
  // stream-abort example.
  const long = await PaliGemma.load(longContextFixture('pg1-tiny-a'))
  t.teardown(() => long.dispose())
  const stream = long.stream({ ...base, maxNewTokens: 4000 })
  let n = 0
  for await (const _ of stream) {
    if (++n === 3) break
  }
  const result = await stream.result
  t.is(result.finishReason, 'abort')
  t.true(result.tokenIds.length >= 3 && result.tokenIds.length < 4000)
  t.deepEqual(result.tokenIds.slice(0, 3), f.generatedIds.slice(0, 3))
  const started = performance.now()
  const after = await long.generate({ ...base, maxNewTokens: 12 })
  t.deepEqual(after.tokenIds, f.generatedIds)
  t.true(performance.now() - started < 2000, 'the worker is not stuck on the abandoned request')
})

// docs/guarantees.md: the model does not wait for a slow reader (it would hold up the queue);
// the stream keeps every chunk, in order, until it is read.
test('a stream read only after generation finished still yields every chunk, in order', async (t) => {
  const model = await loaded
  const request = { ...base, maxNewTokens: 200 }
  const stream = model.stream(request)
  const queuedBehind = model.generate({ ...base, maxNewTokens: 4 })
  const result = await stream.result
  t.is((await queuedBehind).tokenIds.length, 4, 'the next request ran without anyone reading the stream')
  t.true(result.tokenIds.length > 12)
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  t.deepEqual(
    chunks.map((c) => c.tokenId),
    result.tokenIds,
  )
  t.deepEqual(
    chunks.map((c) => c.index),
    result.tokenIds.map((_, i) => i),
  )
  t.is(chunks.map((c) => c.text).join(''), result.text)
})

test('20+ concurrent requests give the same results as sequential ones', async (t) => {
  const model = await loaded
  const requests = Array.from({ length: 24 }, (_, i) =>
    i % 3 === 0 ? { ...base, maxNewTokens: 12 } : { ...base, temperature: 1, seed: i, maxNewTokens: 8 + (i % 7) * 4 },
  )
  const sequential = []
  for (const r of requests) sequential.push((await model.generate(r)).tokenIds)
  const concurrent = await Promise.all(
    requests.map(async (r, i) => {
      if (i % 4 === 1) {
        const ids = []
        for await (const chunk of model.stream(r)) ids.push(chunk.tokenId)
        return ids
      }
      return (await model.generate(r)).tokenIds
    }),
  )
  t.deepEqual(concurrent, sequential)
  const logits = await Promise.all(Array.from({ length: 4 }, () => model.forward(base)))
  for (const out of logits.slice(1)) t.deepEqual(out.logits, logits[0].logits)
})

test('timings report queueing behind earlier requests when the batch is full', async (t) => {
  const model = await PaliGemma.load(f.dir, { maxBatch: 1 })
  try {
    const [first, second] = await Promise.all([
      model.generate({ ...base, maxNewTokens: 200 }),
      model.generate({ ...base, maxNewTokens: 4 }),
    ])
    t.true(second.timings.queuedMs >= first.timings.prefillMs + first.timings.decodeMs * 0.5)
    t.is(first.timings.batchSize, 1)
    t.is(second.timings.batchSize, 1)
  } finally {
    await model.dispose()
  }
})

test('concurrent requests share decode steps and get the tokens they get alone', async (t) => {
  // A model of its own: the shared one serves this file's other tests at the same time.
  const model = await PaliGemma.load(f.dir)
  try {
    const alone = await model.generate({ ...base, maxNewTokens: 200 })
    const [first, second] = await Promise.all([
      model.generate({ ...base, maxNewTokens: 200 }),
      model.generate({ ...base, maxNewTokens: 4 }),
    ])
    t.is(alone.timings.batchSize, 1)
    t.is(first.timings.batchSize, 2, 'the second request joined the first one\'s steps')
    t.deepEqual(first.tokenIds, alone.tokenIds)
    t.deepEqual(second.tokenIds, alone.tokenIds.slice(0, 4))
    // It did not wait for the first one to finish.
    t.true(second.timings.queuedMs < first.timings.prefillMs + first.timings.decodeMs * 0.5)
  } finally {
    await model.dispose()
  }
})

test.serial('the event loop keeps ticking during generation', async (t) => {
  const model = await loaded
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  const started = performance.now()
  let generated = 0
  try {
    // At least 1200 tokens and 300 ms: the faster CPU kernels make 1200 tiny-model tokens take
    // under 100 ms, too short to judge the ticking.
    while (generated < 1200 || performance.now() - started < 300) {
      const result = await model.generate({ ...base, maxNewTokens: 480 })
      generated += result.tokenIds.length
    }
  } finally {
    clearInterval(timer)
  }
  const elapsed = performance.now() - started
  t.log(`${generated} tokens in ${elapsed.toFixed(0)} ms, ${ticks} ticks of a 5 ms interval`)
  t.true(elapsed > 100)
  t.true(ticks >= Math.max(10, (elapsed / 5) * 0.2), `${ticks} ticks in ${elapsed} ms`)
})

test('slidingWindow is a boolean option and changes nothing below 4096 tokens', async (t) => {
  const g = fixture('pg2-tiny-a')
  const model = await PaliGemma.load(g.dir)
  try {
    const base = { inputIds: g.inputIds, pixelValues: g.pixelValues, maxNewTokens: 12 }
    t.deepEqual((await model.generate({ ...base, slidingWindow: true })).tokenIds, Array.from(g.generatedIds, Number))
    const error = await t.throwsAsync(model.generate({ ...base, slidingWindow: 'yes' }))
    t.is(error.code, 'ERR_INVALID_ARGUMENT')
    t.regex(error.message, /slidingWindow/)
  } finally {
    await model.dispose()
  }
})
