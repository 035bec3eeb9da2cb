// Load and faults (issue 9): many concurrent streams with aborts, load/dispose cycles, the
// event loop under load, dispose() with requests in flight, and release by garbage collection.
//
// Every test here is serial: they measure this process's RSS, threads and event-loop delay,
// which concurrent tests in the same file would disturb. ava runs each test file in its own
// process, so other files do not share these numbers (they do share the machine's CPUs).
import { rmSync } from 'node:fs'

import test from 'ava'

import { PaliGemma } from '../dist/index.js'
import { measureEventLoop } from './helpers/eventloop.mjs'
import { fixture, sleep } from './helpers/fixtures.mjs'
import { fmtMB, gc, MB, modelThreadCount, settledRss, waitFor } from './helpers/memory.mjs'
import { prng, writeSyntheticModel } from './helpers/safetensors-write.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }

/** RSS growth allowed after a load test, once garbage is collected. */
const RSS_BOUND = 50 * MB
/** Longest the event loop may be blocked while models work. */
const EVENT_LOOP_BOUND_MS = 50

/** Rejects with a message naming what is still pending when `promise` takes over `ms`. */
function bounded(promise, ms, pending) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms; still pending: ${pending()}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** A second prompt: the fixture's image tokens and BOS, then other text ids. */
const otherPrompt = [...f.inputIds.slice(0, 17), 40, 41, 42, 43, 108]

/** The request variants of the concurrency test: greedy and seeded sampling. */
const VARIANTS = [
  { ...base, maxNewTokens: 24 },
  { ...base, maxNewTokens: 7 },
  { inputIds: otherPrompt, pixelValues: f.pixelValues, maxNewTokens: 20 },
  { ...base, maxNewTokens: 32, temperature: 1, seed: 1 },
  { ...base, maxNewTokens: 32, temperature: 1, seed: 2 },
  { ...base, maxNewTokens: 24, temperature: 0.7, topK: 20, seed: 3 },
  { ...base, maxNewTokens: 24, temperature: 1.3, topP: 0.9, seed: 4 },
  { ...base, maxNewTokens: 24, temperature: 1, repetitionPenalty: 1.3, seed: 5 },
  { inputIds: otherPrompt, pixelValues: f.pixelValues, maxNewTokens: 28, temperature: 1.1, topK: 50, topP: 0.95, seed: 6 },
  { ...base, maxNewTokens: 16, temperature: 2, seed: 2 ** 40 + 7 },
]

/** Each variant's tokens, run one at a time through `stream()`. */
async function sequentialReference(model) {
  const reference = []
  for (const request of VARIANTS) {
    const ids = []
    const stream = model.stream(request)
    for await (const chunk of stream) ids.push(chunk.tokenId)
    const result = await stream.result
    reference.push({ ids, finishReason: result.finishReason })
  }
  return reference
}

const isPrefix = (prefix, of) => prefix.length <= of.length && prefix.every((id, i) => id === of[i])

/**
 * Starts `n` concurrent streams over the variants; a seeded random half is cancelled: by an
 * AbortController after k chunks, by `break` after k chunks, or by an AbortController a few
 * milliseconds after the request was queued. Returns one outcome per stream.
 */
async function concurrentStreams(model, n, seed) {
  const rand = prng(seed)
  const order = [...Array(n).keys()]
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[order[i], order[j]] = [order[j], order[i]]
  }
  const cancelled = new Set(order.slice(0, n / 2))
  const finished = new Set()
  const runs = []
  for (let i = 0; i < n; i++) {
    const variant = i % VARIANTS.length
    const request = VARIANTS[variant]
    let plan = { mode: 'none' }
    if (cancelled.has(i)) {
      const mode = ['signal', 'break', 'early'][Math.floor(rand() * 3)]
      // k ≥ 1 chunks, fewer than the request's maximum (the variant may end earlier on EOS).
      const k = 1 + Math.floor(rand() * (request.maxNewTokens - 1))
      plan = { mode, k, delayMs: Math.floor(rand() * 20) }
    }
    const controller = new AbortController()
    const run = (async () => {
      const stream = model.stream({ ...request, signal: controller.signal })
      if (plan.mode === 'early') setTimeout(() => controller.abort(), plan.delayMs)
      const ids = []
      let error
      try {
        for await (const chunk of stream) {
          ids.push(chunk.tokenId)
          if (ids.length === plan.k && plan.mode === 'signal') controller.abort()
          if (ids.length === plan.k && plan.mode === 'break') break
        }
      } catch (e) {
        error = e
      }
      const result = await stream.result.then(
        (value) => ({ value }),
        (reason) => ({ reason }),
      )
      finished.add(i)
      return { i, variant, plan, ids, error, result }
    })()
    runs.push(run)
  }
  const pending = () => {
    const left = [...Array(n).keys()].filter((i) => !finished.has(i))
    return `${left.length} streams (${left.slice(0, 10).join(', ')}…)`
  }
  return bounded(Promise.all(runs), 60_000, pending)
}

/** Checks every outcome against the sequential reference; returns counts. */
function checkOutcomes(t, outcomes, reference) {
  const counts = { complete: 0, abortedMidway: 0, abortedQueued: 0, broken: 0, abortTooLate: 0 }
  for (const { i, variant, plan, ids, error, result } of outcomes) {
    const expected = reference[variant]
    const where = `stream ${i} (variant ${variant}, ${plan.mode}${plan.k ? ` after ${plan.k}` : ''})`
    if (plan.mode === 'none') {
      t.is(error, undefined, `${where}: ${error?.message}`)
      t.deepEqual(ids, expected.ids, where)
      t.deepEqual(result.value?.tokenIds, expected.ids, where)
      t.is(result.value?.finishReason, expected.finishReason, where)
      counts.complete++
    } else if (plan.mode === 'break') {
      t.is(error, undefined, where)
      t.true(isPrefix(ids, expected.ids), `${where}: chunks are a prefix of the sequential run`)
      t.is(ids.length, Math.min(plan.k, expected.ids.length), where)
      const value = result.value
      t.truthy(value, `${where}: result resolves after break (${result.reason?.message})`)
      t.true(isPrefix(value.tokenIds, expected.ids), `${where}: result tokens are a prefix of the sequential run`)
      if (value.finishReason === 'abort') counts.broken++
      else {
        // The request had finished natively before the loop broke.
        t.deepEqual(value.tokenIds, expected.ids, where)
        counts.abortTooLate++
      }
    } else if (error) {
      // 'signal' and 'early': cancelled through the AbortController.
      t.is(error.name, 'AbortError', `${where}: ${error.message}`)
      t.is(error.code, 'ABORT_ERR', where)
      t.is(result.reason, error, `${where}: result rejects with the same AbortError`)
      t.true(isPrefix(ids, expected.ids), `${where}: chunks before the abort are a prefix of the sequential run`)
      if (plan.mode === 'signal') t.is(ids.length, plan.k, where)
      if (ids.length > 0) counts.abortedMidway++
      else counts.abortedQueued++
    } else {
      // The abort came after the request had finished natively: it is a no-op.
      t.deepEqual(ids, expected.ids, where)
      t.deepEqual(result.value?.tokenIds, expected.ids, where)
      counts.abortTooLate++
    }
  }
  return counts
}

test.serial('200 concurrent streams on one model match sequential runs while a random half is aborted', async (t) => {
  t.timeout(120_000)
  const model = await PaliGemma.load(f.dir)
  const reference = await sequentialReference(model)
  t.true(reference.some((r) => r.ids.length >= 16), 'some variants generate many tokens')
  // generate() runs the same native request.
  t.deepEqual((await model.generate(VARIANTS[3])).tokenIds, reference[3].ids)
  const baseline = await settledRss()
  const started = performance.now()
  const counts = checkOutcomes(t, await concurrentStreams(model, 200, 1234), reference)
  const firstRound = performance.now() - started
  const afterFirst = await settledRss()
  // A second round with another seeded plan: memory must not keep growing.
  const counts2 = checkOutcomes(t, await concurrentStreams(model, 200, 99), reference)
  const after = await settledRss()
  t.log(`round 1: ${firstRound.toFixed(0)} ms, ${JSON.stringify(counts)}; round 2: ${JSON.stringify(counts2)}`)
  t.log(`RSS baseline ${fmtMB(baseline)}, after round 1 ${fmtMB(afterFirst)}, after round 2 ${fmtMB(after)}`)
  t.is(counts.complete, 100)
  t.true(counts.abortedMidway + counts2.abortedMidway > 20, 'many streams were aborted mid-way')
  t.true(counts.broken + counts2.broken > 10, 'many streams were left by break mid-way')
  t.true(after - baseline < RSS_BOUND, `RSS grew by ${fmtMB(after - baseline)}`)
  // The model still serves exactly what it served before.
  for (const [i, request] of VARIANTS.entries()) t.deepEqual((await model.generate(request)).tokenIds, reference[i].ids)
  await model.dispose()
})

test.serial('the event loop is never blocked for more than 50 ms under heavy load', async (t) => {
  t.timeout(120_000)
  // Load: 200 streams (half of them cancelled), 50 generate() calls and 50 forward() passes on
  // two models at once. How the delay is measured: see helpers/eventloop.mjs. The assertion is on
  // the delay caused inside this process (wall-clock gap of a 5 ms timer minus the time the OS
  // kept the JS thread waiting for a CPU, which other processes on a shared machine cause); the
  // raw wall-clock figures are logged next to it.
  const a = await PaliGemma.load(f.dir, { threads: 1 })
  const b = await PaliGemma.load(fixture('pg2-tiny-a').dir, { threads: 1 })
  const g = fixture('pg2-tiny-a')
  await sequentialReference(a) // warm up
  const stop = measureEventLoop()
  const started = performance.now()
  const streams = concurrentStreams(a, 200, 7)
  const generates = Array.from({ length: 50 }, (_, i) =>
    b.generate({ inputIds: g.inputIds, pixelValues: g.pixelValues, maxNewTokens: 24, temperature: 1, seed: i }),
  )
  const forwards = Array.from({ length: 50 }, (_, i) => (i % 2 ? a : b).forward(i % 2 ? base : { inputIds: g.inputIds, pixelValues: g.pixelValues }))
  await bounded(Promise.all([streams, ...generates, ...forwards]), 60_000, () => 'load')
  const elapsed = performance.now() - started
  const m = stop()
  t.log(
    `${elapsed.toFixed(0)} ms of load. Blocked by this process: ≤ ${m.blockedMs.toFixed(1)} ms` +
      `${m.schedstat ? '' : ' (no schedstat: wall clock)'}. Wall clock: setInterval(5) longest extra gap ${m.rawBlockedMs.toFixed(1)} ms, ` +
      `monitorEventLoopDelay max ${m.histogramMaxMs.toFixed(1)} ms (blocked ≤ ${m.histogramBlockedMs.toFixed(1)} ms), ` +
      `p99 ${m.histogramP99Ms.toFixed(1)} ms, mean ${m.histogramMeanMs.toFixed(1)} ms over ${m.ticks} ticks; ` +
      `longest run-queue wait ${m.maxRunQueueWaitMs.toFixed(1)} ms`,
  )
  t.true(m.ticks > 10, 'the monitor ticked')
  t.true(m.blockedMs < EVENT_LOOP_BOUND_MS, `event loop blocked for ${m.blockedMs.toFixed(1)} ms`)
  await Promise.all([a.dispose(), b.dispose()])
})

test.serial('dispose() with many requests in flight settles every one with a result, ERR_DISPOSED or AbortError', async (t) => {
  t.timeout(60_000)
  const unhandled = []
  const onUnhandled = (reason) => unhandled.push(reason)
  process.on('unhandledRejection', onUnhandled)
  try {
    const reference = await (async () => {
      const model = await PaliGemma.load(f.dir)
      const { tokenIds } = await model.generate({ ...base, maxNewTokens: 300 })
      await model.dispose()
      return tokenIds
    })()
    // Three ways to interleave dispose() with the queue: from inside the loop body of the
    // running (first) stream, from a timer, and as soon as the first request succeeds.
    for (const trigger of ['inside the first stream', 'after 25 ms', 'after the first result']) {
      const model = await PaliGemma.load(f.dir)
      const rand = prng(trigger.length)
      const outcomes = []
      let settledCount = 0
      let disposing
      const dispose = () => {
        disposing ??= model.dispose()
      }
      const track = (kind, promise, signal) =>
        outcomes.push(
          promise
            .then(
              (value) => {
                if (trigger === 'after the first result') dispose()
                return { kind, value }
              },
              (reason) => ({ kind, reason, signal }),
            )
            .finally(() => settledCount++),
        )
      if (trigger === 'after 25 ms') setTimeout(dispose, 25)
      for (let i = 0; i < 120; i++) {
        const first = i === 0 && trigger === 'inside the first stream'
        const controller = new AbortController()
        const signal = !first && rand() < 0.2 ? controller.signal : undefined
        if (signal) setTimeout(() => controller.abort(), Math.floor(rand() * 30))
        const pick = first ? 0.5 : rand()
        const request = { ...base, maxNewTokens: first ? 300 : 4 + Math.floor(rand() * 60), signal }
        if (pick < 0.4) {
          track('generate', model.generate(request), signal)
        } else if (pick < 0.8) {
          track(
            'stream',
            (async () => {
              const stream = model.stream(request)
              const ids = []
              for await (const chunk of stream) {
                ids.push(chunk.tokenId)
                if (first && ids.length === 3) dispose()
              }
              const result = await stream.result
              t.deepEqual(result.tokenIds, ids)
              return result
            })(),
            signal,
          )
        } else {
          track('forward', model.forward({ ...base, signal }), signal)
        }
      }
      t.true(await waitFor(() => disposing !== undefined, 10_000), `dispose() was called (${trigger})`)
      // Requests made after dispose() fail with ERR_DISPOSED.
      track('generate', model.generate({ ...base, maxNewTokens: 2 }))
      track('forward', model.forward(base))
      track('stream', model.stream({ ...base, maxNewTokens: 2 }).result)
      t.is(model.dispose(), disposing, 'dispose() again returns the same promise')
      await bounded(disposing, 10_000, () => 'dispose()')
      const settled = await bounded(Promise.all(outcomes), 10_000, () => `${outcomes.length - settledCount} requests after dispose`)
      const counts = { result: 0, ERR_DISPOSED: 0, ABORT_ERR: 0 }
      for (const { kind, value, reason, signal } of settled) {
        if (reason) {
          // Only a request whose own signal aborted may end with AbortError.
          const allowed = signal?.aborted ? ['ERR_DISPOSED', 'ABORT_ERR'] : ['ERR_DISPOSED']
          t.true(allowed.includes(reason.code), `${kind}: ${reason.code} ${reason.message}`)
          if (reason.code === 'ABORT_ERR') t.is(reason.name, 'AbortError')
          counts[reason.code] = (counts[reason.code] ?? 0) + 1
        } else {
          if (kind === 'forward') t.deepEqual(value.dims, [24, 512])
          else t.true(isPrefix(value.tokenIds, reference), `${kind}: the greedy tokens`)
          counts.result++
        }
      }
      t.log(`dispose ${trigger}: ${JSON.stringify(counts)}`)
      t.true(counts.ERR_DISPOSED >= 3, 'requests cancelled by dispose() reject with ERR_DISPOSED')
      if (trigger === 'after the first result') t.true(counts.result >= 1, 'requests that finished before dispose() keep their results')
    }
    await sleep(50)
    t.deepEqual(unhandled, [], 'no unhandled rejections')
    t.true(await waitFor(() => modelThreadCount() === 0), 'every worker thread exited')
    // A later load works and gives the reference tokens.
    const model = await PaliGemma.load(f.dir)
    t.deepEqual((await model.generate({ ...base, maxNewTokens: 12 })).tokenIds, f.generatedIds)
    await model.dispose()
  } finally {
    process.off('unhandledRejection', onUnhandled)
  }
})

test.serial('1000 load/dispose cycles grow RSS by less than 50 MB', async (t) => {
  t.timeout(120_000)
  const cycle = async (i) => {
    const model = await PaliGemma.load(f.dir)
    if (i % 100 === 0) t.deepEqual((await model.generate({ ...base, maxNewTokens: 12 })).tokenIds, f.generatedIds)
    await model.dispose()
  }
  for (let i = 0; i < 20; i++) await cycle(i) // warm-up: allocator arenas, lazy statics
  const baseline = await settledRss()
  const started = performance.now()
  const checkpoints = []
  for (let i = 0; i < 1000; i++) {
    await cycle(i)
    if (i % 250 === 249) checkpoints.push(fmtMB(process.memoryUsage().rss))
  }
  const elapsed = performance.now() - started
  const after = await settledRss()
  t.log(`1000 cycles in ${(elapsed / 1000).toFixed(1)} s; RSS baseline ${fmtMB(baseline)}, every 250: ${checkpoints.join(', ')}, after GC ${fmtMB(after)}`)
  t.true(after - baseline < RSS_BOUND, `RSS grew by ${fmtMB(after - baseline)}`)
  t.true(await waitFor(() => modelThreadCount() === 0), 'no worker or pool thread is left')
})

test.serial('a model released only by garbage collection frees its native memory', async (t) => {
  t.timeout(60_000)
  const synthetic = writeSyntheticModel()
  const prompt = [...Array(synthetic.imageTokens).fill(synthetic.imageTokenId), 2, 10, 11, 12]
  const pixelValues = new Float32Array(3 * 32 * 32)
  const threadsBefore = modelThreadCount()
  const baseline = await settledRss()
  let loaded
  await (async () => {
    const model = await PaliGemma.load(synthetic.dir)
    const result = await model.generate({ inputIds: prompt, pixelValues, maxNewTokens: 4 })
    t.is(result.tokenIds.length, 4)
    loaded = await settledRss()
    // Held here: a live model is not collected.
    t.true(loaded - baseline > 0.7 * synthetic.weightBytes, `loading raised RSS by ${fmtMB(loaded - baseline)}`)
    t.false(model.disposed)
  })()
  // The last reference is gone; no dispose() was called.
  let after = process.memoryUsage().rss
  const released = await waitFor(async () => {
    after = await settledRss(1)
    return modelThreadCount() === threadsBefore && after - baseline < 0.25 * synthetic.weightBytes
  }, 10_000)
  t.log(`weights ${fmtMB(synthetic.weightBytes)}; RSS baseline ${fmtMB(baseline)}, loaded ${fmtMB(loaded)}, after GC ${fmtMB(after)}`)
  t.true(released, `after GC: ${modelThreadCount() - threadsBefore} model threads left, RSS ${fmtMB(after - baseline)} above baseline`)
  rmSync(synthetic.dir, { recursive: true, force: true })
})

test.serial('a collected model finishes its queued requests before its worker exits', async (t) => {
  t.timeout(30_000)
  const threadsBefore = modelThreadCount()
  let ref
  const pending = await (async () => {
    const model = await PaliGemma.load(f.dir, { threads: 1 })
    ref = new WeakRef(model)
    return Array.from({ length: 40 }, () => model.generate({ ...base, maxNewTokens: 12 }))
  })()
  // The requests do not keep the model object alive; collect it while they are queued. (A
  // WeakRef is cleared by the GC itself; FinalizationRegistry callbacks may come much later.)
  await sleep(0)
  gc()
  await sleep(0)
  const collectedWhilePending = ref.deref() === undefined
  const results = await bounded(Promise.all(pending), 10_000, () => 'requests of a collected model')
  t.true(collectedWhilePending, 'the model object was collected while its requests were queued')
  for (const result of results) t.deepEqual(result.tokenIds, f.generatedIds)
  t.true(await waitFor(() => modelThreadCount() === threadsBefore, 5_000, true), 'the worker exits once collected and drained')
})
