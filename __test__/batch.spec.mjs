// Many images on one machine (issue 22, part 1): model.batch and `paligemma batch`, with corrupt
// images among good ones, resuming after SIGKILL, and a 5000-image run in flat memory.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma, taskResultJson } from '../dist/index.js'
import { fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { noisyPng } from './helpers/png.mjs'
import { CLI, runCli } from './helpers/run-cli.mjs'

const modelDir = fixtureWithTokenizer('pg1-tiny-a')
const ready = PaliGemma.load(modelDir)
test.after.always(async () => (await ready).dispose())

/** A folder of `n` PNGs (sizes vary) plus the given extra files; returns the folder and sorted paths. */
function imageFolder(n, extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'paligemma-batch-'))
  const paths = []
  for (let i = 0; i < n; i++) {
    const path = join(dir, `img${String(i).padStart(5, '0')}.png`)
    writeFileSync(path, noisyPng(8 + (i % 29)))
    paths.push(path)
  }
  for (const [name, bytes] of Object.entries(extra)) {
    writeFileSync(join(dir, name), bytes)
    paths.push(join(dir, name))
  }
  return { dir, paths: paths.sort() }
}

const readLines = (path) => readFileSync(path, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))

test.serial('model.batch: every image once with its index, each equal to runTask alone; a corrupt one yields its error', async (t) => {
  const model = await ready
  const images = [noisyPng(20), Buffer.from('not an image'), noisyPng(24), noisyPng(28), noisyPng(32)]
  const seen = []
  for await (const item of model.batch(images, { task: 'caption', maxNewTokens: 6, concurrency: 3 })) {
    seen.push(item)
    t.is(item.input, images[item.index])
    // Serial tests run alone, so the model's batch holds this batch's images only.
    if (item.result) t.true(item.result.timings.batchSize <= 3, 'no more than `concurrency` in flight')
  }
  t.deepEqual(seen.map((s) => s.index).sort(), [0, 1, 2, 3, 4])
  for (const item of seen) {
    if (item.index === 1) {
      t.is(item.error.code, 'ERR_INVALID_IMAGE')
      t.is(item.result, undefined)
      continue
    }
    t.is(item.error, undefined)
    const alone = await model.runTask(images[item.index], { task: 'caption' }, { maxNewTokens: 6 })
    t.deepEqual(item.result.tokenIds, alone.tokenIds)
    t.is(item.result.text, alone.text)
  }
})

test.serial('model.batch: async iterable inputs, items with their own task, detections parsed', async (t) => {
  const model = await ready
  async function* inputs() {
    yield noisyPng(16)
    yield { image: noisyPng(18), task: 'detect', labels: ['cat', 'dog'] }
    yield { image: noisyPng(22), lang: 'de' }
  }
  const results = []
  for await (const item of model.batch(inputs(), { maxNewTokens: 8 })) results[item.index] = item
  t.is(results.length, 3)
  const detect = await model.generate({ image: noisyPng(18), prompt: 'detect cat ; dog', maxNewTokens: 8 })
  t.deepEqual(results[1].result.tokenIds, detect.tokenIds)
  t.true(Array.isArray(results[1].result.detections))
  const german = await model.generate({ image: noisyPng(22), prompt: 'caption de', maxNewTokens: 8 })
  t.deepEqual(results[2].result.tokenIds, german.tokenIds, 'item words add to the batch task')
  t.is(results[0].result.detections, undefined)
})

test.serial('model.batch: abort ends the loop with AbortError; leaving early cancels; bad arguments are ERR_INVALID_ARGUMENT', async (t) => {
  const model = await ready
  const controller = new AbortController()
  const many = Array.from({ length: 40 }, (_, i) => noisyPng(10 + i))
  let count = 0
  const error = await t.throwsAsync(async () => {
    for await (const _ of model.batch(many, { maxNewTokens: 200, signal: controller.signal, concurrency: 4 })) {
      if (++count === 2) controller.abort()
    }
  })
  t.is(error.code, 'ABORT_ERR')
  t.is(count, 2)
  for await (const _ of model.batch(many, { maxNewTokens: 200, concurrency: 4 })) break
  t.is((await model.runTask(many[0], { task: 'ocr' }, { maxNewTokens: 2 })).tokenIds.length, 2, 'the model serves after both')
  for (const [inputs, options, pattern] of [
    ['photo.jpg', {}, /inputs/],
    [new Uint8Array(3), {}, /inputs/],
    [[noisyPng(8)], { task: 'nope' }, /task/],
    [[noisyPng(8)], { task: 'ask' }, /question/],
    [[noisyPng(8)], { task: 'caption', labels: 'cat' }, /labels/],
    [[noisyPng(8)], { concurrency: 0 }, /concurrency/],
  ]) {
    const bad = await t.throwsAsync(async () => {
      for await (const item of model.batch(inputs, options)) if (item.error) throw item.error
    })
    t.is(bad.code, 'ERR_INVALID_ARGUMENT', String(pattern))
    t.regex(bad.message, pattern)
  }
})

test('paligemma batch: JSON lines for good and corrupt images, exit 1, a rerun has nothing to do', async (t) => {
  const { dir, paths } = imageFolder(12, { 'broken.png': Buffer.from('\x89PNG\r\n\x1a\n truncated'), 'notes.txt': Buffer.from('not an image list entry') })
  mkdirSync(join(dir, 'sub'))
  writeFileSync(join(dir, 'sub', 'deep.jpg'), Buffer.from('not a jpeg'))
  const out = join(dir, 'results.jsonl')
  const first = await runCli(['batch', '--model', modelDir, '--task', 'detect', '--prompt', 'cat ; dog', '-n', '8', '--out', out, dir])
  t.is(first.code, 1, first.stderr)
  t.regex(first.stderr, /14 images in .* 2 failed/)
  const lines = readLines(out)
  const images = paths.filter((p) => p.endsWith('.png')).concat(join(dir, 'sub', 'deep.jpg'))
  t.deepEqual(lines.map((l) => l.path).sort(), images.sort())
  const model = await ready
  for (const line of lines) {
    if (/broken|deep/.test(line.path)) {
      t.is(line.error.code, 'ERR_INVALID_IMAGE')
      continue
    }
    const want = taskResultJson(await model.runTask(line.path, { task: 'detect', labels: 'cat ; dog' }, { maxNewTokens: 8 }))
    t.deepEqual(line.tokenIds, want.tokenIds, line.path)
    t.deepEqual(line.detections, JSON.parse(JSON.stringify(want.detections)))
    t.is(line.prompt, 'detect cat ; dog')
    t.truthy(line.finishReason)
    t.true(line.timings.prefillMs >= 0)
  }
  // A rerun retries the two failed images only (they fail again) and keeps one line per image.
  const second = await runCli(['batch', '--model', modelDir, '--task', 'detect', '--prompt', 'cat ; dog', '-n', '8', '--out', out, dir])
  t.is(second.code, 1)
  t.regex(second.stderr, /12 of 14 images are already in/)
  t.is(readLines(out).length, 14)
})

test('paligemma batch: globs, lists and usage errors', async (t) => {
  const { dir, paths } = imageFolder(4)
  const list = join(dir, 'list.txt')
  writeFileSync(list, `# two of them\n${paths[0]}\n\n${paths[2].split('/').at(-1)}\n`)
  const out = join(dir, 'a.jsonl')
  const fromList = await runCli(['batch', '--model', modelDir, '-n', '3', '--out', out, list])
  t.is(fromList.code, 0, fromList.stderr)
  t.deepEqual(readLines(out).map((l) => l.path).sort(), [paths[0], paths[2]])
  const globbed = join(dir, 'b.jsonl')
  const fromGlob = await runCli(['batch', '--model', modelDir, '-n', '3', '--task', 'ocr', '--out', globbed, `${dir}/img0000[13].png`])
  t.is(fromGlob.code, 0, fromGlob.stderr)
  t.deepEqual(readLines(globbed).map((l) => l.path).sort(), [paths[1], paths[3]])
  for (const [args, pattern] of [
    [['--prompt', 'x', dir], /--prompt does not apply/],
    [['--task', 'ask', dir], /question/],
    [['--task', 'segment', '--prompt', 'cat', dir], /--vae/],
    [[], /needs the images/],
    [['--task', 'fly', dir], /--task must be one of/],
  ]) {
    const run = await runCli(['batch', '--model', modelDir, '--out', join(dir, 'c.jsonl'), ...args], { env: { PALIGEMMA_VAE: '' } })
    t.is(run.code, 2, run.stderr)
    t.regex(run.stderr, pattern)
  }
  const none = await runCli(['batch', '--model', modelDir, '--out', join(dir, 'd.jsonl'), `${dir}/*.gif`])
  t.is(none.code, 1)
  t.regex(none.stderr, /matches no image/)
})

/** Starts `paligemma batch` and resolves once `until(progress)` holds, with the child. */
function startBatch(args, until) {
  const child = spawn(process.execPath, [CLI, 'batch', '--json-progress', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PALIGEMMA_NO_CUDA: '1' } })
  let stderr = ''
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, stderr })))
  const reached = new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (d) => {
      stderr += d
      for (const line of d.split('\n')) {
        if (!line.startsWith('{')) continue
        const progress = JSON.parse(line)
        if (until(progress, child.pid)) resolve(progress)
      }
    })
    exited.then(({ code }) => reject(new Error(`batch exited (${code}) before the condition: ${stderr}`)))
  })
  return { child, reached, exited }
}

// Serial, so that no other test of this file holds up the event loop that watches for the kill.
test.serial('paligemma batch: SIGKILL mid-run loses only what was in flight; the rerun completes every image exactly once', async (t) => {
  const { dir, paths } = imageFolder(600)
  const out = join(dir, 'results.jsonl')
  const args = ['--model', modelDir, '-n', '64', '--concurrency', '4', '--out', out, dir]
  const run = startBatch(args, () => false)
  run.reached.catch(() => undefined)
  // Killed as soon as 60 results are on disk, mid-write of others perhaps.
  while (!existsSync(out) || readFileSync(out, 'utf8').split('\n').length <= 60) await new Promise((r) => setTimeout(r, 5))
  run.child.kill('SIGKILL')
  const killed = await run.exited
  t.is(killed.signal, 'SIGKILL')
  const partial = readFileSync(out, 'utf8')
  const before = partial.split('\n').filter(Boolean).length
  t.true(before >= 60 && before < 600, `${before} lines before the kill`)
  const rerun = await runCli(['batch', ...args])
  t.is(rerun.code, 0, rerun.stderr)
  const lines = readLines(out)
  t.is(lines.length, 600)
  t.deepEqual(lines.map((l) => l.path).sort(), paths)
  const model = await ready
  for (const line of lines.filter((_, i) => i % 50 === 0)) {
    t.deepEqual(line.tokenIds, (await model.runTask(line.path, {}, { maxNewTokens: 64 })).tokenIds, line.path)
  }
})

test('paligemma batch: 5000 images, RSS not growing with the count', async (t) => {
  const { dir } = imageFolder(5000)
  const out = join(dir, 'results.jsonl')
  const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN) / 1024
  const samples = {}
  const run = startBatch(['--model', modelDir, '-n', '4', '--out', out, dir], (p, pid) => {
    if (p.done >= 1000 && samples.early === undefined) samples.early = rss(pid)
    if (p.done >= 4500 && samples.late === undefined) samples.late = rss(pid)
    return false
  })
  run.reached.catch(() => undefined)
  const { code, stderr } = await run.exited
  t.is(code, 0, stderr)
  t.is(readFileSync(out, 'utf8').trimEnd().split('\n').length, 5000)
  t.log(`RSS after 1000 images ${samples.early?.toFixed(1)} MB, after 4500 ${samples.late?.toFixed(1)} MB`)
  // V8 lets its heap grow to ~100 MB before collecting hard (a 20 000-image run levels off at
  // 106 MB from image 6000 on), so this bound is loose; the in-process test below is the sharp one.
  t.true(samples.late - samples.early < 40, `RSS grew ${(samples.late - samples.early).toFixed(1)} MB over 3500 images`)
})

test.serial('model.batch: 5000 images from an async iterable, heap and RSS flat after GC', async (t) => {
  const model = await ready
  const images = Array.from({ length: 29 }, (_, i) => noisyPng(8 + i))
  async function* inputs() {
    for (let i = 0; i < 5000; i++) yield images[i % images.length]
  }
  const measure = () => {
    global.gc()
    const { rss, heapUsed } = process.memoryUsage()
    return { rss: rss / 2 ** 20, heap: heapUsed / 2 ** 20 }
  }
  let done = 0
  let early
  for await (const item of model.batch(inputs(), { maxNewTokens: 4 })) {
    if (item.error) throw item.error
    if (++done === 1000) early = measure()
  }
  const late = measure()
  t.is(done, 5000)
  t.log(`after 1000: heap ${early.heap.toFixed(1)} MB, RSS ${early.rss.toFixed(1)} MB; after 5000: heap ${late.heap.toFixed(1)} MB, RSS ${late.rss.toFixed(1)} MB`)
  t.true(late.heap - early.heap < 2, `the JS heap grew ${(late.heap - early.heap).toFixed(2)} MB over 4000 images`)
  t.true(late.rss - early.rss < 20, `RSS grew ${(late.rss - early.rss).toFixed(1)} MB over 4000 images`)
})
