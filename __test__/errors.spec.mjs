// Every invalid input gets the right code, in TS and again natively; load failures.
import { mkdtempSync, writeFileSync, copyFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma, PaliGemmaError } from '../dist/index.js'
import { cudaFallbackNote, native } from '../dist/src/native.js'
import { fixture } from './helpers/fixtures.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: 4 }
const loaded = PaliGemma.load(f.dir)

test.after.always(async () => {
  await (await loaded).dispose()
})

const fifteenImages = [...f.inputIds]
fifteenImages[0] = 3
const outsideVocab = [...f.inputIds]
outsideVocab[20] = 9999

const invalidRequests = {
  'negative temperature': { temperature: -1 },
  'NaN temperature': { temperature: Number.NaN },
  'string temperature': { temperature: '0.5' },
  'topP > 1': { topP: 1.5 },
  'topP = 0': { topP: 0 },
  'negative topK': { topK: -1 },
  'fractional topK': { topK: 2.5 },
  'repetitionPenalty 0': { repetitionPenalty: 0 },
  'maxNewTokens 0': { maxNewTokens: 0 },
  'negative maxNewTokens': { maxNewTokens: -3 },
  'fractional maxNewTokens': { maxNewTokens: 1.5 },
  'huge maxNewTokens': { maxNewTokens: 1e12 },
  'maxNewTokens beyond the context': { maxNewTokens: 489 },
  'negative seed': { seed: -1 },
  'unsafe seed': { seed: 2 ** 60 },
  'stop not an array': { stop: 'END' },
  'stop with a number': { stop: [1] },
  'stop with an empty string': { stop: [''] },
  'stop strings without a tokenizer': { stop: ['\n'] },
  'wrong pixelValues length': { pixelValues: new Float32Array(10) },
  'pixelValues as a plain array': { pixelValues: Array.from(f.pixelValues) },
  'pixelValues missing': { pixelValues: undefined },
  'image-token count mismatch': { inputIds: fifteenImages },
  'id outside the vocabulary': { inputIds: outsideVocab },
  'empty inputIds': { inputIds: [] },
  'inputIds as a string': { inputIds: '500 500' },
  'fractional token id': { inputIds: [...f.inputIds.slice(0, 23), 1.5] },
  'signal not an AbortSignal': { signal: { aborted: false } },
  'unknown option': { maxTokens: 10 },
}

for (const [name, patch] of Object.entries(invalidRequests)) {
  test(`generate rejects ${name} with ERR_INVALID_ARGUMENT`, async (t) => {
    const model = await loaded
    const error = await t.throwsAsync(model.generate({ ...base, ...patch }), { instanceOf: PaliGemmaError })
    t.is(error.code, 'ERR_INVALID_ARGUMENT', error.message)
    t.regex(error.message, /invalid argument `/)
  })
}

test('invalid requests fail the stream loop too', async (t) => {
  const model = await loaded
  const stream = model.stream({ ...base, temperature: -1 })
  await t.throwsAsync(async () => {
    for await (const _ of stream) t.fail()
  }, { code: 'ERR_INVALID_ARGUMENT' })
  await t.throwsAsync(stream.result, { code: 'ERR_INVALID_ARGUMENT' })
})

test('non-object requests are rejected', async (t) => {
  const model = await loaded
  for (const request of [undefined, null, 42, 'x', [base]]) {
    await t.throwsAsync(model.generate(request), { code: 'ERR_INVALID_ARGUMENT' })
  }
  await t.throwsAsync(model.generate({ pixelValues: f.pixelValues }), { code: 'ERR_INVALID_ARGUMENT', message: /inputIds/ })
  await t.throwsAsync(model.forward({ inputIds: fifteenImages, pixelValues: f.pixelValues }), { code: 'ERR_INVALID_ARGUMENT', message: /image tokens/ })
})

test('the native layer validates again (bypassing the TS checks)', async (t) => {
  const model = await loaded
  // Reach the native handle the way the TS layer does, with values the TS layer would refuse.
  const binding = native()
  const handle = await binding.loadModel(f.dir, { device: 'cpu' }, new binding.CancelToken())
  const run = (patch) =>
    new Promise((resolve) => {
      const request = {
        inputIds: Uint32Array.from(f.inputIds),
        pixelValues: f.pixelValues,
        maxNewTokens: 4,
        temperature: 0,
        topK: 0,
        topP: 1,
        repetitionPenalty: 1,
        seed: 0,
        stop: [],
        ...patch,
      }
      handle.generate(request, new binding.CancelToken(), (event) => {
        if (event.kind !== 'token') resolve(event)
      })
    })
  for (const patch of [
    { temperature: -1 },
    { topP: 2 },
    { seed: -5 },
    { seed: 0.5 },
    { maxNewTokens: 0 },
    { maxNewTokens: 100000 },
    { pixelValues: new Float32Array(5) },
    { inputIds: Uint32Array.from(fifteenImages) },
    { stop: ['x'] },
  ]) {
    const event = await run(patch)
    t.is(event.kind, 'error', JSON.stringify(patch))
    t.is(event.error.code, 'ERR_INVALID_ARGUMENT', event.error.message)
  }
  const nan = new Float32Array(f.pixelValues)
  nan[5] = Number.NaN
  t.is((await run({ pixelValues: nan })).error.code, 'ERR_INVALID_ARGUMENT')
  t.is((await run({})).kind, 'done')
  t.throws(() => handle.generate({ inputIds: 'nope' }, new binding.CancelToken(), () => {}))
  await handle.dispose()
  t.is(model.disposed, false)
})

test('load: a missing folder is ERR_MODEL_LOAD', async (t) => {
  const error = await t.throwsAsync(PaliGemma.load(join(tmpdir(), 'no-such-paligemma-model')), { instanceOf: PaliGemmaError })
  t.is(error.code, 'ERR_MODEL_LOAD')
  t.regex(error.message, /config\.json/)
})

test('load: a bad config is ERR_MODEL_LOAD', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'paligemma-bad-'))
  writeFileSync(join(dir, 'config.json'), '{ "model_type": "paligemma", ')
  copyFileSync(join(f.dir, 'model.safetensors'), join(dir, 'model.safetensors'))
  await t.throwsAsync(PaliGemma.load(dir), { code: 'ERR_MODEL_LOAD', message: /config/ })
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'llama' }))
  await t.throwsAsync(PaliGemma.load(dir), { code: 'ERR_MODEL_LOAD', message: /model_type/ })
})

test('load: missing weights are ERR_MODEL_LOAD', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'paligemma-noweights-'))
  copyFileSync(join(f.dir, 'config.json'), join(dir, 'config.json'))
  await t.throwsAsync(PaliGemma.load(dir), { code: 'ERR_MODEL_LOAD', message: /model\.safetensors/ })
})

test('load: an aborted signal rejects with AbortError', async (t) => {
  await t.throwsAsync(PaliGemma.load(f.dir, { signal: AbortSignal.abort() }), { name: 'AbortError', code: 'ABORT_ERR' })
  const controller = new AbortController()
  const pending = PaliGemma.load(f.dir, { signal: controller.signal })
  controller.abort()
  await t.throwsAsync(pending, { name: 'AbortError' })
})

test('load: device cuda on a CPU build is ERR_DEVICE_UNAVAILABLE', async (t) => {
  if (native().addonInfo().cuda) return t.pass('this addon was built with CUDA')
  const error = await t.throwsAsync(PaliGemma.load(f.dir, { device: 'cuda' }), { code: 'ERR_DEVICE_UNAVAILABLE' })
  t.regex(error.message, /CUDA/)
})

test('load: device auto on a CPU-only install runs on the CPU and reports no fallback', async (t) => {
  // (scripts/test-pack-install.sh checks the fallback from an installed CUDA build.)
  if (native().addonInfo().cuda || cudaFallbackNote()) return t.pass('a CUDA build is installed here')
  const warnings = []
  const onWarning = (w) => warnings.push(w)
  process.on('warning', onWarning)
  const model = await PaliGemma.load(f.dir, { device: 'auto' })
  await new Promise((resolve) => setImmediate(resolve))
  process.off('warning', onWarning)
  t.is(model.info.device, 'cpu')
  t.false('deviceFallback' in model.info)
  t.deepEqual(warnings.filter((w) => w.code === 'PALIGEMMA_CPU_FALLBACK'), [])
  await model.dispose()
})

test('load: bf16 on the CPU runs, and visionDtype is checked', async (t) => {
  // f32 activations over bf16 matrices (AVX512-BF16), or f32 on CPUs without it: on the fixture
  // the greedy ids are f32's either way (tests/bf16_cpu.rs checks the logits).
  const [bf16, f32] = [await PaliGemma.load(f.dir, { device: 'cpu', dtype: 'bf16' }), await PaliGemma.load(f.dir, { device: 'cpu' })]
  t.is(bf16.info.dtype, 'bf16')
  const [a, b] = [await bf16.generate({ ...base, maxNewTokens: 6 }), await f32.generate({ ...base, maxNewTokens: 6 })]
  t.deepEqual(a.tokenIds, b.tokenIds)
  await Promise.all([bf16.dispose(), f32.dispose()])
  await t.throwsAsync(PaliGemma.load(f.dir, { dtype: 'q8_0', visionDtype: 'int8' }), { code: 'ERR_INVALID_ARGUMENT', message: /visionDtype.*'f32' or 'bf16'/ })
  await t.throwsAsync(PaliGemma.load(f.dir, { dtype: 'f16', visionDtype: 'bf16' }), { code: 'ERR_INVALID_ARGUMENT', message: /visionDtype/ })
  const mixed = await PaliGemma.load(f.dir, { dtype: 'q8_0', visionDtype: 'bf16' })
  t.is(mixed.info.dtype, 'q8_0')
  t.is((await mixed.generate({ ...base, maxNewTokens: 3 })).tokenIds.length, 3)
  await mixed.dispose()
})

test('load: f16 on the CPU works', async (t) => {
  const model = await PaliGemma.load(f.dir, { dtype: 'f16' })
  t.is(model.info.dtype, 'f16')
  const result = await model.generate({ ...base, maxNewTokens: 3 })
  t.is(result.tokenIds.length, 3)
  await model.dispose()
})

const invalidLoads = {
  'a non-string folder': [42, undefined],
  'an empty folder name': ['', undefined],
  'non-object options': [f.dir, 'cpu'],
  'an unknown device': [f.dir, { device: 'gpu' }],
  'an unknown dtype': [f.dir, { dtype: 'f64' }],
  'zero threads': [f.dir, { threads: 0 }],
  'fractional threads': [f.dir, { threads: 1.5 }],
  'a non-function onProgress': [f.dir, { onProgress: 'yes' }],
  'a non-signal signal': [f.dir, { signal: 'stop' }],
  'an unknown option': [f.dir, { gpuLayers: 10 }],
}

for (const [name, [dir, options]] of Object.entries(invalidLoads)) {
  test(`load rejects ${name} with ERR_INVALID_ARGUMENT`, async (t) => {
    await t.throwsAsync(PaliGemma.load(dir, options), { code: 'ERR_INVALID_ARGUMENT' })
  })
}
