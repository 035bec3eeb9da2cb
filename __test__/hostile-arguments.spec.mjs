// Issue 19, arguments: hostile objects (Proxies whose traps throw, revoked Proxies, throwing
// getters, sparse arrays) never make a call throw synchronously or reject with anything but a
// PaliGemmaError; pixel values that would overflow are refused; `forward` can return chosen
// positions only.
import test from 'ava'

import * as api from '../dist/index.js'
import { validateForwardInput } from '../dist/src/options.js'
import { fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { base, f, good, stillServes } from './helpers/hostile.mjs'
import { onePixelPng } from './helpers/png.mjs'
import { rewrittenFixture } from './helpers/safetensors-write.mjs'

const { PaliGemma, PaliGemmaError, preprocessImage } = api

const loaded = PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'))

test.after.always(async () => {
  await (await loaded).dispose()
})

const throwingTraps = () =>
  new Proxy({}, {
    get() { throw new Error('get trap') },
    has() { throw new Error('has trap') },
    ownKeys() { throw new Error('ownKeys trap') },
    getPrototypeOf() { throw new Error('getPrototypeOf trap') },
  })
const revoked = () => {
  const { proxy, revoke } = Proxy.revocable({}, {})
  revoke()
  return proxy
}
const throwingGetter = (key, rest = {}) =>
  Object.defineProperty({ ...rest }, key, { enumerable: true, get() { throw new Error(`${key} getter`) } })

/** Calls `call` (which must not throw) and checks that its promise rejects with ERR_INVALID_ARGUMENT. */
async function rejectsAsArgument(t, what, call) {
  let settled
  t.notThrows(() => {
    settled = call()
  }, `${what} threw synchronously`)
  const error = await t.throwsAsync(Promise.resolve(settled), { instanceOf: PaliGemmaError }, what)
  t.is(error?.code, 'ERR_INVALID_ARGUMENT', `${what}: ${error?.message}`)
}

test('hostile request objects reject generate, stream and forward instead of throwing', async (t) => {
  const model = await loaded
  const hostile = { throwingTraps: throwingTraps(), revoked: revoked(), getter: throwingGetter('maxNewTokens', base), imageGetter: throwingGetter('prompt', { image: onePixelPng() }) }
  for (const [name, request] of Object.entries(hostile)) {
    await rejectsAsArgument(t, `generate(${name})`, () => model.generate(request))
    await rejectsAsArgument(t, `stream(${name}).result`, () => model.stream(request).result)
    await rejectsAsArgument(t, `forward(${name})`, () => model.forward(request))
  }
  // A stream's loop sees the same error.
  const error = await t.throwsAsync(async () => {
    for await (const _ of model.stream(revoked())) t.fail('no chunk expected')
  })
  t.is(error.code, 'ERR_INVALID_ARGUMENT')
  await stillServes(t, model)
})

test('hostile options reject the task helpers and preprocessImage the same way', async (t) => {
  const model = await loaded
  const image = onePixelPng()
  for (const [name, options] of Object.entries({ throwingTraps: throwingTraps(), revoked: revoked(), getter: throwingGetter('lang') })) {
    await rejectsAsArgument(t, `caption(${name})`, () => model.caption(image, options))
    await rejectsAsArgument(t, `detect(${name})`, () => model.detect(image, 'cat', options))
    await rejectsAsArgument(t, `preprocessImage options ${name}`, () => preprocessImage(image, 16, options))
    await rejectsAsArgument(t, `preprocessImage image ${name}`, () => preprocessImage(options, 16))
  }
  await rejectsAsArgument(t, 'load options', () => PaliGemma.load(f.dir, throwingGetter('device')))
  await stillServes(t, model)
})

test('sparse arrays are refused naming the option', async (t) => {
  const model = await loaded
  // eslint-disable-next-line no-sparse-arrays
  const error = await t.throwsAsync(model.generate({ ...good, stop: [, 'a'] }))
  t.is(error.code, 'ERR_INVALID_ARGUMENT')
  t.regex(error.message, /`stop`: entry 0 must be a non-empty string, got undefined/)
  // eslint-disable-next-line no-sparse-arrays
  const labels = await t.throwsAsync(model.detect(onePixelPng(), [, 'cat']))
  t.is(labels.code, 'ERR_INVALID_ARGUMENT')
  t.regex(labels.message, /`labels`: entry 0/)
})

test('pixel values that would overflow the vision tower are refused', async (t) => {
  const model = await loaded
  for (const bad of [3.4e38, -2e4]) {
    const pixelValues = Float32Array.from(f.pixelValues)
    pixelValues[7] = bad
    for (const call of [() => model.generate({ ...good, pixelValues }), () => model.forward({ ...base, pixelValues })]) {
      const error = await t.throwsAsync(call())
      t.is(error.code, 'ERR_INVALID_ARGUMENT', error.message)
      t.regex(error.message, /pixelValues.*value 7 .*within ±10000/)
    }
  }
  // The largest accepted magnitude still runs.
  const pixelValues = Float32Array.from(f.pixelValues)
  pixelValues[7] = 1e4
  t.is((await model.forward({ ...base, pixelValues })).dims[0], f.inputIds.length)
  await stillServes(t, model)
})

test('forward returns the chosen positions only, matching the rows of the full pass', async (t) => {
  const model = await loaded
  const full = await model.forward(base)
  const [seq, vocab] = full.dims
  const row = (out, i) => out.logits.subarray(i * vocab, (i + 1) * vocab)
  // A few rows go through the LM head's few-row kernels rather than the prompt's GEMM: the same
  // sums in another order, so within f32 rounding (the parity tolerance, 1e-4), not bitwise.
  const close = (a, b, what) => {
    const worst = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0)
    t.true(worst < 1e-4, `${what}: max |Δ| ${worst}`)
  }
  const last = await model.forward({ ...base, positions: 'last' })
  t.deepEqual(last.dims, [1, vocab])
  close(row(last, 0), row(full, seq - 1), 'last')
  const chosen = await model.forward({ ...base, positions: [3, 0, 3] })
  t.deepEqual(chosen.dims, [3, vocab])
  close(row(chosen, 0), row(full, 3), 'position 3')
  close(row(chosen, 1), row(full, 0), 'position 0')
  t.deepEqual(row(chosen, 2), row(chosen, 0), 'a repeated position gives the same row')
  t.deepEqual((await model.forward({ ...base, positions: 'all' })).dims, [seq, vocab])
  for (const positions of [[], [seq], [-1], [1.5], 'first', new Float32Array(1)]) {
    const error = await t.throwsAsync(model.forward({ ...base, positions }))
    t.is(error.code, 'ERR_INVALID_ARGUMENT', `${JSON.stringify(positions)}: ${error.message}`)
    t.regex(error.message, /`positions`/)
  }
})

test('forward refuses logits larger than 2 GiB before running', (t) => {
  // PaliGemma's real vocabulary: 2087 positions fit in 2 GiB of float32, 2088 do not.
  const info = { imageSize: 16, imageTokens: 1, imageTokenId: 9, vocabSize: 257_152 }
  const input = (n, positions) => ({ inputIds: [9, ...Array(n - 1).fill(2)], pixelValues: new Float32Array(3 * 16 * 16), positions })
  t.notThrows(() => validateForwardInput(input(2087), info))
  const error = t.throws(() => validateForwardInput(input(2088), info))
  t.is(error.code, 'ERR_INVALID_ARGUMENT')
  t.regex(error.message, /`positions`.*2147483648-byte limit.*'last'/)
  t.is(validateForwardInput(input(5000, 'last'), info).positions.length, 1)
})

test('weights that overflow to NaN logits fail the request instead of answering garbage', async (t) => {
  // The final norm's weights at ±3e38: its output overflows to ±∞, and the LM head's sums of
  // +∞ and −∞ are NaN. Greedy argmax over NaNs used to pick a token silently.
  const dir = rewrittenFixture(f.dir, {
    label: 'nan-logits',
    edit: (tensors) => {
      const t = tensors['language_model.model.norm.weight']
      const values = new Float32Array(t.bytes.length / 4).map((_, i) => (i % 2 ? 3e38 : -3e38))
      tensors['language_model.model.norm.weight'] = { shape: t.shape, data: values }
    },
  })
  const model = await PaliGemma.load(dir)
  try {
    for (const sampling of [{}, { temperature: 1, seed: 1 }]) {
      const error = await t.throwsAsync(model.generate({ ...good, ...sampling }))
      t.is(error.code, 'ERR_INTERNAL', error.message)
      t.regex(error.message, /NaN logit/)
    }
  } finally {
    await model.dispose()
  }
})
