// Parity with the reference fixtures: forward logits, greedy generation, streaming, model info
// and load progress, for both tiny models (PaliGemma 1 and 2).
import test from 'ava'

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { PaliGemma, prepareModel } from '../dist/index.js'
import { FIXTURES, fixture } from './helpers/fixtures.mjs'

for (const name of FIXTURES) {
  const f = fixture(name)
  const loaded = PaliGemma.load(f.dir)

  test(`${name}: forward matches the reference prefill logits`, async (t) => {
    const model = await loaded
    const { logits, dims } = await model.forward({ inputIds: f.inputIds, pixelValues: f.pixelValues })
    t.deepEqual(dims, f.prefillLogits.shape)
    t.true(logits instanceof Float32Array)
    t.is(logits.length, f.prefillLogits.data.length)
    let maxDiff = 0
    for (let i = 0; i < logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(logits[i] - f.prefillLogits.data[i]))
    t.log(`max |Δ| = ${maxDiff.toExponential(3)}`)
    t.true(maxDiff <= 1e-4, `max |Δ| ${maxDiff}`)
  })

  test(`${name}: greedy generate reproduces the reference ids`, async (t) => {
    const model = await loaded
    const result = await model.generate({ inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: 12 })
    t.deepEqual(result.tokenIds, f.generatedIds)
    t.is(result.finishReason, 'length')
    t.is(result.text, '')
    const { timings } = result
    t.is(timings.promptTokens, f.inputIds.length)
    t.is(timings.generatedTokens, 12)
    t.is(timings.decodeSteps, 11)
    t.true(timings.prefillMs > 0 && timings.decodeMs > 0 && timings.queuedMs >= 0)
    t.true(Math.abs(timings.tokensPerSecond - timings.decodeSteps / (timings.decodeMs / 1000)) < 1e-6)
    t.is(timings.decodeGraph, false, 'CUDA graphs only exist on CUDA')
  })

  test(`${name}: stream yields the same ids as generate`, async (t) => {
    const model = await loaded
    const request = { inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: 12 }
    const stream = model.stream(request)
    const chunks = []
    for await (const chunk of stream) chunks.push(chunk)
    t.deepEqual(chunks.map((c) => c.tokenId), f.generatedIds)
    t.deepEqual(chunks.map((c) => c.index), [...f.generatedIds.keys()])
    t.true(chunks.every((c) => c.text === ''))
    const result = await stream.result
    t.deepEqual(result.tokenIds, f.generatedIds)
    t.deepEqual((await model.generate(request)).tokenIds, result.tokenIds)
  })

  test(`${name}: inputIds may be any ArrayLike<number>`, async (t) => {
    const model = await loaded
    for (const inputIds of [Uint32Array.from(f.inputIds), Int32Array.from(f.inputIds), { length: f.inputIds.length, ...f.inputIds }]) {
      const result = await model.generate({ inputIds, pixelValues: f.pixelValues, maxNewTokens: 3 })
      t.deepEqual(result.tokenIds, f.generatedIds.slice(0, 3))
    }
  })

  test(`${name}: model.info`, async (t) => {
    const model = await loaded
    const config = f.meta
    t.like(model.info, {
      architecture: name.startsWith('pg2') ? 'paligemma2' : 'paligemma',
      imageSize: 32,
      imageTokens: config.n_image_tokens,
      imageTokenId: 500,
      bosTokenId: 2,
      vocabSize: 512,
      contextLength: 512,
      device: 'cpu',
      dtype: 'f32',
      hasTokenizer: false,
    })
    t.deepEqual(model.info.eosTokenIds, [1])
    t.is(model.info.hiddenSize, name.startsWith('pg2') ? 80 : 64)
    t.true(Number.isInteger(model.info.threads) && model.info.threads >= 1)
    t.true(Object.isFrozen(model.info))
  })

  test(`${name}: onProgress reports bytes up to the total`, async (t) => {
    const seen = []
    const model = await PaliGemma.load(f.dir, { onProgress: (p) => seen.push(p) })
    t.true(seen.length >= 1)
    const last = seen.at(-1)
    t.true(last.totalBytes > 0)
    t.is(last.loadedBytes, last.totalBytes)
    for (let i = 1; i < seen.length; i++) t.true(seen[i].loadedBytes >= seen[i - 1].loadedBytes)
    t.true(seen.every((p) => p.totalBytes === last.totalBytes))
    await model.dispose()
  })

  test(`${name}: onProgress says what the load is doing`, async (t) => {
    const phases = async (dir, options) => {
      const seen = new Set()
      const model = await PaliGemma.load(dir, { ...options, threads: 1, onProgress: (p) => seen.add(p.phase) })
      await model.dispose()
      return [...seen].sort()
    }
    t.deepEqual(await phases(f.dir, {}), ['converting'])
    t.deepEqual(await phases(f.dir, { dtype: 'q8_0' }), ['converting', 'quantizing'])
    // A prepared folder maps its matrices in place (its norms and biases are still read).
    const out = join(mkdtempSync(join(tmpdir(), 'pg-phases-')), 'prepared')
    try {
      await prepareModel(f.dir, out, { dtype: 'q8_0' })
      const prepared = await phases(out, { dtype: 'q8_0' })
      t.true(prepared.includes('mapping'), prepared.join(', '))
      t.false(prepared.includes('quantizing'), prepared.join(', '))
    } finally {
      rmSync(join(out, '..'), { recursive: true, force: true })
    }
  })

  test.after.always(async () => {
    await (await loaded).dispose()
  })
}

test('several models run at once', async (t) => {
  const models = await Promise.all(FIXTURES.map((name) => PaliGemma.load(fixture(name).dir, { threads: 1 })))
  const results = await Promise.all(
    FIXTURES.map((name, i) => {
      const f = fixture(name)
      return models[i].generate({ inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: 12 })
    }),
  )
  FIXTURES.forEach((name, i) => t.deepEqual(results[i].tokenIds, fixture(name).generatedIds))
  t.is(models[0].info.threads, 1)
  await Promise.all(models.map((m) => m.dispose()))
})
