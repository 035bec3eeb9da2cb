// Many machines (issue 22, part 2): workers on BullMQ and a real Redis. Jobs equal the same
// task run in-process; bad job data fails at once with its error code; cancellation aborts the
// generation; and three worker processes, one SIGKILLed and one SIGTERMed mid-run, complete
// 300 jobs exactly once.
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'
import { Queue, QueueEvents } from 'bullmq'

import { PaliGemma, taskResultJson } from '../dist/index.js'
import { collectResults, createWorker, enqueueJobs } from '../dist/queue.js'
import { fixtureWithTokenizer, longContextFixture, repo, sleep } from './helpers/fixtures.mjs'
import { noisyPng } from './helpers/png.mjs'
import { startRedis } from './helpers/redis.mjs'
import { CLI } from './helpers/run-cli.mjs'

const modelDir = fixtureWithTokenizer('pg1-tiny-a')
const vaePath = join(repo, 'testdata', 'vae', 'vae-tiny.safetensors')
const imagesDir = mkdtempSync(join(tmpdir(), 'paligemma-queue-images-'))
const imagePath = (i) => join(imagesDir, `img${i}.png`)
for (let i = 0; i < 300; i++) writeFileSync(imagePath(i), noisyPng(8 + (i % 29)))

const ready = (async () => ({ redis: await startRedis(), model: await PaliGemma.load(modelDir) }))()
test.after.always(async () => {
  const { redis, model } = await ready
  await model.dispose()
  await redis.stop()
})

/** What must match between a job's return value and the same task run in-process (not timings). */
const outcome = (r) => JSON.parse(JSON.stringify({ text: r.text, tokenIds: r.tokenIds, finishReason: r.finishReason, detections: r.detections, segmentations: r.segmentations }))

async function inProcess(model, data) {
  const { image, options = {}, ...spec } = data
  const input = image.path ?? Buffer.from(image.base64, 'base64')
  return outcome(taskResultJson(await model.runTask(input, spec, { ...options, ...(spec.task === 'segment' ? { vaePath } : {}) })))
}

async function collectAll(connection, queue, expected) {
  const results = new Map()
  const deadline = Date.now() + 120_000
  while (results.size < expected && Date.now() < deadline) {
    for await (const job of collectResults({ connection, queue, skip: new Set(results.keys()) })) results.set(job.id, job)
    if (results.size < expected) await sleep(100)
  }
  return results
}

test('createWorker: every task, equal to runTask in-process, with progress; collectResults reads them back', async (t) => {
  const { redis, model } = await ready
  const queue = 'tasks'
  const worker = await createWorker(model, { connection: redis.url, queue, concurrency: 4, vaePath, progressEveryTokens: 4 })
  const events = new QueueEvents(queue, { connection: { host: '127.0.0.1', port: redis.port } })
  const progress = []
  events.on('progress', ({ data }) => progress.push(data))
  await events.waitUntilReady()
  try {
    const jobs = [
      { task: 'caption', image: { path: imagePath(0) }, options: { maxNewTokens: 12 } },
      { task: 'ask', question: 'what is it?', lang: 'fr', image: { path: imagePath(1) }, options: { maxNewTokens: 6 } },
      { task: 'ocr', image: { base64: noisyPng(30).toString('base64') }, options: { maxNewTokens: 6 } },
      { task: 'detect', labels: ['cat', 'dog'], image: { path: imagePath(2) }, options: { maxNewTokens: 10 } },
      { task: 'segment', labels: 'cat', image: { path: imagePath(3) }, options: { maxNewTokens: 10 } },
      { task: 'generate', prompt: 'describe en', image: { path: imagePath(4) }, options: { maxNewTokens: 8, temperature: 0.9, seed: 7 } },
    ]
    const { ids } = await enqueueJobs({ connection: redis.url, queue }, jobs)
    t.is(new Set(ids).size, jobs.length)
    const again = await enqueueJobs({ connection: redis.url, queue }, jobs.slice(0, 2))
    t.deepEqual(again.ids, ids.slice(0, 2), 'the same job data has the same id (enqueued once)')
    const results = await collectAll(redis.url, queue, jobs.length)
    t.is(results.size, jobs.length)
    for (const [i, id] of ids.entries()) {
      const job = results.get(id)
      t.is(job.error, undefined, JSON.stringify(job.error))
      t.deepEqual(outcome(job.result), await inProcess(model, jobs[i]), jobs[i].task)
    }
    t.true(Array.isArray(results.get(ids[3]).result.detections))
    t.true(Array.isArray(results.get(ids[4]).result.segmentations))
    t.true(progress.some((p) => p.tokens === 4 || p.tokens === 8), `progress events: ${JSON.stringify(progress)}`)
    const queueHandle = new Queue(queue, { connection: { host: '127.0.0.1', port: redis.port } })
    t.deepEqual(await queueHandle.getJobCounts('completed', 'failed'), { completed: jobs.length, failed: 0 })
    await queueHandle.close()
  } finally {
    await events.close()
    await worker.close()
  }
})

test('bad job data fails at once, not retried, with the library error code; enqueueJobs refuses it before sending', async (t) => {
  const { redis, model } = await ready
  const queueName = 'hostile'
  const worker = await createWorker(model, { connection: redis.url, queue: queueName, imageRoots: [imagesDir] })
  const queue = new Queue(queueName, { connection: { host: '127.0.0.1', port: redis.port } })
  try {
    const cases = [
      [{ task: 'caption' }, /^ERR_INVALID_ARGUMENT: .*image/],
      [{ task: 'paint', image: { path: imagePath(0) } }, /^ERR_INVALID_ARGUMENT: .*task/],
      [{ task: 'ask', image: { path: imagePath(0) } }, /^ERR_INVALID_ARGUMENT: .*question/],
      [{ image: { path: imagePath(0) }, colour: 'red' }, /^ERR_INVALID_ARGUMENT: .*colour/],
      [{ image: { path: imagePath(0) }, options: { maxNewTokens: -1 } }, /^ERR_INVALID_ARGUMENT: .*maxNewTokens/],
      [{ image: { base64: 'A'.repeat(50_000_000) } }, /^ERR_INVALID_IMAGE: .*20000000-byte limit/],
      [{ image: { base64: Buffer.from('not an image').toString('base64') } }, /^ERR_INVALID_IMAGE/],
      [{ image: { path: '/etc/passwd' } }, /^ERR_INVALID_ARGUMENT: .*outside the worker's image roots/],
      [{ image: { path: join(imagesDir, '..', 'elsewhere.png') } }, /^ERR_INVALID_IMAGE: .*no file/],
      [{ image: { url: 'http://127.0.0.1:1/cat.png' } }, /^ERR_INVALID_ARGUMENT: .*does not fetch URLs/],
      [{ image: { path: imagePath(0), base64: 'AAAA' } }, /^ERR_INVALID_ARGUMENT: .*image/],
    ]
    const jobs = await Promise.all(cases.map(([data], i) => queue.add(`bad${i}`, data, { attempts: 3, backoff: { type: 'fixed', delay: 10 } })))
    for (const [i, job] of jobs.entries()) {
      let state
      for (let tries = 0; tries < 300 && state !== 'failed'; tries++) {
        state = await job.getState()
        if (state !== 'failed') await sleep(20)
      }
      const failed = await queue.getJob(job.id)
      t.is(state, 'failed', `case ${i}`)
      t.regex(failed.failedReason, cases[i][1], `case ${i}`)
      t.is(failed.attemptsMade, 1, `case ${i} was not retried`)
    }
    const good = await queue.add('good', { image: { path: imagePath(5) }, options: { maxNewTokens: 3 } })
    for (let tries = 0; tries < 300 && (await good.getState()) !== 'completed'; tries++) await sleep(20)
    t.is(await good.getState(), 'completed', 'the worker still serves')
    const refused = await t.throwsAsync(enqueueJobs({ connection: redis.url, queue: queueName }, [{ task: 'paint', image: { path: imagePath(0) } }]))
    t.is(refused.code, 'ERR_INVALID_ARGUMENT')
  } finally {
    await queue.close()
    await worker.close()
  }
})

test('worker.cancelJob, and cancelJob from another process, abort the running generation: ABORT_ERR, unretried', async (t) => {
  const { redis } = await ready
  // Long enough that a cancellation from another process (a node start, a Redis round trip)
  // surely arrives mid-generation.
  const model = await PaliGemma.load(longContextFixture('pg1-tiny-a', 65536))
  const queueName = 'cancel'
  const worker = await createWorker(model, { connection: redis.url, queue: queueName, progressEveryTokens: 8 })
  const queue = new Queue(queueName, { connection: { host: '127.0.0.1', port: redis.port } })
  try {
    const job = await queue.add('long', { image: { path: imagePath(0) }, options: { maxNewTokens: 7000 } }, { attempts: 3 })
    for (let tries = 0; tries < 500 && !(await queue.getJob(job.id)).progress?.tokens; tries++) await sleep(10)
    t.true(worker.cancelJob(job.id, 'user asked'))
    for (let tries = 0; tries < 500 && (await job.getState()) !== 'failed'; tries++) await sleep(10)
    const failed = await queue.getJob(job.id)
    t.is(await failed.getState(), 'failed')
    t.regex(failed.failedReason, /^ABORT_ERR/)
    t.is(failed.attemptsMade, 1)
    t.true(failed.progress.tokens < 7000, 'it stopped early')
    // From another process: cancelJob publishes on the queue's relay topic.
    const other = await queue.add('long2', { image: { path: imagePath(0) }, options: { maxNewTokens: 60000 } }, { attempts: 3 })
    for (let tries = 0; tries < 500 && !(await queue.getJob(other.id)).progress?.tokens; tries++) await sleep(10)
    // `paligemma cancel` is cancelJob from the command line.
    const args = [CLI, 'cancel', '--redis', redis.url, '--queue', queueName, '--reason', 'from afar', other.id]
    await new Promise((resolve, reject) => spawn(process.execPath, args, { stdio: 'inherit' }).once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`paligemma cancel exited ${code}`)))))
    for (let tries = 0; tries < 500 && (await other.getState()) !== 'failed'; tries++) await sleep(10)
    const remote = await queue.getJob(other.id)
    t.is(await remote.getState(), 'failed', JSON.stringify({ reason: remote.returnvalue?.finishReason, tokens: remote.returnvalue?.tokenIds?.length }))
    t.regex(remote.failedReason, /^ABORT_ERR/)
    t.is(remote.attemptsMade, 1)
    t.true(remote.progress.tokens > 0 && remote.progress.tokens < 60000, `${remote.progress.tokens} tokens`)
  } finally {
    await queue.close()
    await worker.close()
    await model.dispose()
  }
})

/** Starts `paligemma worker` and resolves once it prints that it is ready. */
async function startWorker(redisUrl, queue) {
  const child = spawn(process.execPath, [CLI, 'worker', '--model', modelDir, '--redis', redisUrl, '--queue', queue, '--concurrency', '4', '--lock-duration', '1000', '--threads', '1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PALIGEMMA_NO_CUDA: '1' },
  })
  let output = ''
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, output })))
  await new Promise((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d) => {
      output += d
      if (/worker on queue/.test(output)) resolve()
    })
    child.stderr.setEncoding('utf8').on('data', (d) => (output += d))
    exited.then(() => reject(new Error(`worker exited early: ${output}`)))
  })
  return { child, exited }
}

test('3 worker processes, one SIGKILLed and one SIGTERMed mid-run: 300 jobs each complete exactly once, equal to in-process', async (t) => {
  const { redis, model } = await ready
  const queueName = 'kill'
  const connection = { host: '127.0.0.1', port: redis.port }
  const events = new QueueEvents(queueName, { connection })
  const completions = new Map()
  events.on('completed', ({ jobId }) => completions.set(jobId, (completions.get(jobId) ?? 0) + 1))
  await events.waitUntilReady()
  const queue = new Queue(queueName, { connection })
  const workers = await Promise.all([0, 1, 2].map(() => startWorker(redis.url, queueName)))
  try {
    const jobs = Array.from({ length: 300 }, (_, i) => ({ image: { path: imagePath(i) }, options: { maxNewTokens: 40 } }))
    const { ids } = await enqueueJobs({ connection: redis.url, queue: queueName }, jobs)
    while ((await queue.getJobCounts('completed')).completed < 60) await sleep(10)
    workers[0].child.kill('SIGKILL')
    workers[1].child.kill('SIGTERM')
    const killed = await workers[0].exited
    t.is(killed.signal, 'SIGKILL')
    const termed = await workers[1].exited
    t.is(termed.code, 0, `SIGTERM exits 0 once its jobs are done: ${termed.output}`)
    const deadline = Date.now() + 120_000
    let counts
    do {
      counts = await queue.getJobCounts('completed', 'failed', 'active', 'wait', 'delayed')
      if (counts.completed + counts.failed === 300) break
      await sleep(50)
    } while (Date.now() < deadline)
    t.is(counts.completed, 300, JSON.stringify(counts))
    t.is(counts.failed, 0)
    await sleep(200)
    t.is(completions.size, 300, 'a completed event for every job')
    t.true([...completions.values()].every((n) => n === 1), 'and only one each')
    const stalled = (await Promise.all(ids.map((id) => queue.getJob(id)))).filter((job) => job.stalledCounter > 0).length
    t.log(`${stalled} jobs were handed over after the SIGKILL`)
    t.true(stalled > 0, 'the killed worker had jobs running, which another worker finished')
    // Only the killed worker's jobs (4 at a time) may stall: the others renewed their 1 s locks
    // on time while generating, since inference runs off the event loop.
    t.true(stalled <= 4, `${stalled} jobs stalled: more than the killed worker held`)
    for (const [i, id] of ids.entries()) {
      const job = await queue.getJob(id)
      t.deepEqual(outcome(job.returnvalue), await inProcess(model, jobs[i]), `job ${i}`)
    }
  } finally {
    for (const w of workers) w.child.kill('SIGKILL')
    await events.close()
    await queue.close()
  }
})
