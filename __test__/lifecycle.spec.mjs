// dispose(), garbage collection and the per-model threads.
import { readdirSync, readFileSync } from 'node:fs'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

import test from 'ava'

import { PaliGemma } from '../dist/index.js'
import { fixture, sleep } from './helpers/fixtures.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }

/** Names of this process's threads (Linux). */
function threadNames() {
  return readdirSync('/proc/self/task').map((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()
    } catch {
      return ''
    }
  })
}

/** Threads of paligemma models (`pgm<id>-worker`, pool threads `pgm<id>-<i>`), by model id. */
function modelThreads() {
  const byModel = new Map()
  for (const name of threadNames()) {
    const match = /^pgm(\d+)-/.exec(name)
    if (match) byModel.set(match[1], [...(byModel.get(match[1]) ?? []), name])
  }
  return byModel
}

/** Threads of models loaded since `before` (a modelThreads() snapshot) was taken. */
function newThreads(before) {
  return [...modelThreads()].filter(([id]) => !before.has(id)).flatMap(([, names]) => names)
}

async function waitFor(condition, ms = 3000) {
  const end = performance.now() + ms
  while (performance.now() < end) {
    if (condition()) return true
    await sleep(10)
  }
  return condition()
}

test.serial('use after dispose is ERR_DISPOSED; dispose twice is harmless', async (t) => {
  const model = await PaliGemma.load(f.dir)
  t.false(model.disposed)
  const first = model.dispose()
  t.true(model.disposed)
  t.is(model.dispose(), first, 'the same promise')
  await first
  await model.dispose()
  await model[Symbol.asyncDispose]()
  await t.throwsAsync(model.generate({ ...base, maxNewTokens: 2 }), { code: 'ERR_DISPOSED' })
  await t.throwsAsync(model.forward(base), { code: 'ERR_DISPOSED' })
  const stream = model.stream({ ...base, maxNewTokens: 2 })
  await t.throwsAsync(async () => {
    for await (const _ of stream) t.fail()
  }, { code: 'ERR_DISPOSED' })
  t.is(model.info.imageTokens, 16, 'info stays readable')
})

test.serial('dispose cancels running and queued requests with ERR_DISPOSED', async (t) => {
  // maxBatch 1: the second generation waits for the first, so it is still queued at dispose.
  const model = await PaliGemma.load(f.dir, { maxBatch: 1 })
  const running = model.generate({ ...base, maxNewTokens: 480 })
  const queued = model.generate({ ...base, maxNewTokens: 12 })
  const forward = model.forward(base)
  const stream = model.stream({ ...base, maxNewTokens: 480 })
  await sleep(5)
  await model.dispose()
  await t.throwsAsync(running, { code: 'ERR_DISPOSED' })
  await t.throwsAsync(queued, { code: 'ERR_DISPOSED' })
  await t.throwsAsync(stream.result, { code: 'ERR_DISPOSED' })
  // A forward pass runs between two decode steps rather than behind the generations, so it
  // has either finished or been cancelled; never anything else.
  const outcome = await forward.then((out) => out.dims[0], (error) => error.code)
  t.true(outcome === f.inputIds.length || outcome === 'ERR_DISPOSED', String(outcome))
})

test.serial('dispose during a full batch settles every request', async (t) => {
  const model = await PaliGemma.load(f.dir, { maxBatch: 4 })
  t.is(model.info.maxBatch, 4)
  const requests = Array.from({ length: 10 }, (_, i) => model.generate({ ...base, maxNewTokens: 400 + i }))
  const streams = Array.from({ length: 3 }, () => model.stream({ ...base, maxNewTokens: 480 }))
  await sleep(5)
  await model.dispose()
  for (const request of [...requests, ...streams.map((s) => s.result)]) {
    await t.throwsAsync(request, { code: 'ERR_DISPOSED' })
  }
})

test.serial('threads sets the size of the model pool; dispose ends its threads', async (t) => {
  const before = modelThreads()
  const model = await PaliGemma.load(f.dir, { threads: 3 })
  t.is(model.info.threads, 3)
  const names = newThreads(before)
  t.is(names.length, 4, `worker + 3 pool threads: ${names.join(', ')}`)
  t.deepEqual((await model.generate({ ...base, maxNewTokens: 12 })).tokenIds, f.generatedIds)
  await model.dispose()
  t.true(await waitFor(() => newThreads(before).length === 0), `left: ${newThreads(before).join(', ')}`)
})

test.serial('a model dropped without dispose() is freed by garbage collection', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc')
  const before = modelThreads()
  await (async () => {
    const model = await PaliGemma.load(f.dir, { threads: 1 })
    await model.generate({ ...base, maxNewTokens: 4 })
  })()
  t.is(newThreads(before).length, 2)
  const freed = await waitFor(() => {
    gc()
    return newThreads(before).length === 0
  }, 5000)
  t.true(freed, 'the worker exits once the JS handle is collected')
})

test.serial('a throwing onProgress stops loading and load rejects with its error', async (t) => {
  const before = modelThreads()
  const bug = new Error('progress bug')
  const error = await t.throwsAsync(
    PaliGemma.load(f.dir, {
      onProgress: () => {
        throw bug
      },
    }),
  )
  t.is(error, bug)
  t.true(await waitFor(() => newThreads(before).length === 0), 'nothing stays loaded')
})
