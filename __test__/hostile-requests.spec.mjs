// Hostile requests through the JS API (issue 9): every bad request gets ERR_INVALID_ARGUMENT
// with a message that names the problem, and the same model still serves a good request
// afterwards. Nothing here may crash, hang or allocate what the input claims. Bad model folders:
// hostile-folders.spec.mjs; bad images: hostile-images.spec.mjs.
import { rmSync } from 'node:fs'

import test from 'ava'

import * as api from '../dist/index.js'
import { measureEventLoop } from './helpers/eventloop.mjs'
import { fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { IMAGE, base, f, good, stillServes } from './helpers/hostile.mjs'

const { PaliGemma, PaliGemmaError } = api

const loaded = PaliGemma.load(f.dir)
const withTokenizerDir = fixtureWithTokenizer('pg1-tiny-a')
const loadedWithTokenizer = PaliGemma.load(withTokenizerDir)

test.after.always(async () => {
  await Promise.all([(await loaded).dispose(), (await loadedWithTokenizer).dispose()])
  rmSync(withTokenizerDir, { recursive: true, force: true })
})

/** A prompt of `n` tokens: the 16 image tokens, BOS, then text ids. */
function prompt(n) {
  return [...Array(16).fill(IMAGE), 2, ...Array(n - 17).fill(108)]
}

const detached = new Float32Array(f.pixelValues)
structuredClone(detached.buffer, { transfer: [detached.buffer] })
const withValue = (i, v) => {
  const p = new Float32Array(f.pixelValues)
  p[i] = v
  return p
}
const idsWith = (i, v) => {
  const ids = [...f.inputIds]
  ids[i] = v
  return ids
}

// [request, message pattern]: every one must reject with ERR_INVALID_ARGUMENT. `forward: true`
// marks the ones that forward() must refuse the same way.
const invalidRequests = {
  'a 600-token prompt (max_position_embeddings is 512)': [{ ...base, inputIds: prompt(600) }, /`inputIds`.*600 tokens.*at most 512 positions/, true],
  'a 512-token prompt with the default maxNewTokens': [{ ...base, inputIds: prompt(512) }, /`inputIds`.*512 tokens.*no room to generate/],
  'a prompt + maxNewTokens beyond the positions': [{ ...base, inputIds: prompt(500), maxNewTokens: 13 }, /`maxNewTokens`.*13 new tokens.*500-token prompt.*at most 12/],
  'a huge array-like prompt ({ length: 2^32 })': [{ ...base, inputIds: { length: 2 ** 32 } }, /`inputIds`.*4294967296 tokens/, true],
  'inputIds with a negative length': [{ ...base, inputIds: { length: -1 } }, /`inputIds`/, true],
  'inputIds with a fractional length': [{ ...base, inputIds: { length: 1.5 } }, /`inputIds`/, true],
  'inputIds with a NaN length': [{ ...base, inputIds: { length: Number.NaN } }, /`inputIds`/, true],
  'an id equal to the vocabulary size': [{ ...base, inputIds: idsWith(20, 512) }, /`inputIds`.*id 512 at index 20 is outside the vocabulary of 512/, true],
  'an id of 2^32 (would wrap in a Uint32Array)': [{ ...base, inputIds: idsWith(20, 2 ** 32) }, /`inputIds`.*4294967296.*outside the vocabulary/, true],
  'an id of 2^53': [{ ...base, inputIds: idsWith(20, 2 ** 53) }, /`inputIds`.*outside the vocabulary/, true],
  'a Uint32Array id ≥ vocab': [{ ...base, inputIds: Uint32Array.from(idsWith(23, 4_000_000_000)) }, /`inputIds`.*4000000000.*outside the vocabulary/, true],
  'a negative id': [{ ...base, inputIds: idsWith(20, -1) }, /`inputIds`.*entry 20.*-1/, true],
  'a NaN id': [{ ...base, inputIds: idsWith(20, Number.NaN) }, /`inputIds`.*entry 20.*NaN/, true],
  'an Infinity id': [{ ...base, inputIds: idsWith(20, Number.POSITIVE_INFINITY) }, /`inputIds`.*entry 20/, true],
  'a fractional id': [{ ...base, inputIds: idsWith(20, 1.5) }, /`inputIds`.*entry 20.*1\.5/, true],
  'a bigint id': [{ ...base, inputIds: idsWith(20, 5n) }, /`inputIds`.*entry 20.*bigint/, true],
  'a string id': [{ ...base, inputIds: idsWith(20, '5') }, /`inputIds`.*entry 20.*string/, true],
  'a sparse inputIds array': [{ ...base, inputIds: new Array(24) }, /`inputIds`.*entry 0.*undefined/, true],
  'a missing image token': [{ ...base, inputIds: idsWith(0, 3) }, /`inputIds`.*15 image tokens.*exactly 16/, true],
  'inputIds as a string': [{ ...base, inputIds: '500 500 500' }, /`inputIds`.*array or typed array.*string/, true],
  'inputIds as a number': [{ ...base, inputIds: 500 }, /`inputIds`.*number 500/, true],
  'inputIds null': [{ ...base, inputIds: null }, /`inputIds`/, true],
  'empty inputIds': [{ ...base, inputIds: [] }, /`inputIds`.*empty/, true],
  'pixelValues as a plain array': [{ ...base, pixelValues: Array.from(f.pixelValues) }, /`pixelValues`.*Float32Array.*an array/, true],
  'pixelValues as a Float64Array': [{ ...base, pixelValues: Float64Array.from(f.pixelValues) }, /`pixelValues`.*Float32Array.*Float64Array/, true],
  'pixelValues as bytes': [{ ...base, pixelValues: new Uint8Array(3072) }, /`pixelValues`.*Float32Array/, true],
  'pixelValues of the wrong length': [{ ...base, pixelValues: new Float32Array(3071) }, /`pixelValues`.*3071 values.*3072/, true],
  'pixelValues on a detached buffer': [{ ...base, pixelValues: detached }, /`pixelValues`.*0 values/, true],
  'pixelValues missing': [{ inputIds: f.inputIds }, /`pixelValues`/, true],
  'a NaN pixel': [{ ...base, pixelValues: withValue(7, Number.NaN) }, /`pixelValues`.*7.*finite/, true],
  'an infinite pixel': [{ ...base, pixelValues: withValue(3071, Number.NEGATIVE_INFINITY) }, /`pixelValues`.*3071.*finite/, true],
  'NaN temperature': [{ ...good, temperature: Number.NaN }, /`temperature`.*NaN/],
  'negative temperature': [{ ...good, temperature: -0.5 }, /`temperature`.*-0\.5/],
  'infinite temperature': [{ ...good, temperature: Number.POSITIVE_INFINITY }, /`temperature`.*Infinity/],
  'temperature as a string': [{ ...good, temperature: '0.7' }, /`temperature`.*string/],
  'topP 0': [{ ...good, temperature: 1, topP: 0 }, /`topP`.*\(0, 1\].*0/],
  'topP 1.5': [{ ...good, temperature: 1, topP: 1.5 }, /`topP`.*1\.5/],
  'topP NaN': [{ ...good, temperature: 1, topP: Number.NaN }, /`topP`.*NaN/],
  'negative topK': [{ ...good, topK: -1 }, /`topK`.*-1/],
  'fractional topK': [{ ...good, topK: 2.5 }, /`topK`.*2\.5/],
  'topK 2^32': [{ ...good, topK: 2 ** 32 }, /`topK`.*4294967296/],
  'repetitionPenalty 0': [{ ...good, repetitionPenalty: 0 }, /`repetitionPenalty`/],
  'repetitionPenalty NaN': [{ ...good, repetitionPenalty: Number.NaN }, /`repetitionPenalty`.*NaN/],
  'non-integer maxNewTokens': [{ ...base, maxNewTokens: 2.5 }, /`maxNewTokens`.*2\.5/],
  'huge maxNewTokens': [{ ...base, maxNewTokens: 1e12 }, /`maxNewTokens`.*1000000000000/],
  'maxNewTokens 2^31': [{ ...base, maxNewTokens: 2 ** 31 }, /`maxNewTokens`.*2147483648/],
  'zero maxNewTokens': [{ ...base, maxNewTokens: 0 }, /`maxNewTokens`.*0/],
  'negative maxNewTokens': [{ ...base, maxNewTokens: -4 }, /`maxNewTokens`.*-4/],
  'NaN maxNewTokens': [{ ...base, maxNewTokens: Number.NaN }, /`maxNewTokens`.*NaN/],
  'maxNewTokens as a string': [{ ...base, maxNewTokens: '4' }, /`maxNewTokens`.*string/],
  'negative seed': [{ ...good, seed: -1 }, /`seed`.*-1/],
  'fractional seed': [{ ...good, seed: 0.5 }, /`seed`.*0\.5/],
  'seed beyond 2^53 − 1': [{ ...good, seed: 2 ** 53 }, /`seed`.*9007199254740992/],
  'stop that is not an array': [{ ...good, stop: 'END' }, /`stop`.*array of strings.*string/],
  'stop as an object': [{ ...good, stop: { 0: 'a', length: 1 } }, /`stop`.*array of strings.*object/],
  'stop with a number': [{ ...good, stop: ['a', 2] }, /`stop`.*entry 1.*number 2/],
  'stop with null': [{ ...good, stop: [null] }, /`stop`.*entry 0.*null/],
  'stop with an empty string': [{ ...good, stop: [''] }, /`stop`.*entry 0/],
  'stop strings without a tokenizer': [{ ...good, stop: ['\n'] }, /`stop`.*tokenizer\.json/],
  'an unknown option': [{ ...good, maxTokens: 5 }, /`request\.maxTokens`.*unknown option/],
  'a misspelt option': [{ ...good, temprature: 1 }, /`request\.temprature`.*unknown option/],
  'an own __proto__ key (from JSON.parse)': [{ ...good, ...JSON.parse('{"__proto__": {"temperature": 1}}') }, /`request\.__proto__`.*unknown option/],
  'signal that is not an AbortSignal': [{ ...good, signal: { aborted: true } }, /`signal`.*AbortSignal/, true],
  'request null': [null, /`request`.*null/],
  'request undefined': [undefined, /`request`.*undefined/],
  'request as a number': [42, /`request`.*number 42/],
  'request as a string': ['caption en', /`request`.*string/],
  'request as an array': [[good], /`request`.*an array/],
}

for (const [name, [request, message, forward]] of Object.entries(invalidRequests)) {
  test(`request with ${name}: ERR_INVALID_ARGUMENT`, async (t) => {
    const model = await loaded
    let pending
    t.notThrows(() => {
      pending = model.generate(request)
    }, 'generate() never throws synchronously')
    const error = await t.throwsAsync(pending, { instanceOf: PaliGemmaError })
    t.is(error.code, 'ERR_INVALID_ARGUMENT', error.message)
    t.regex(error.message, message)
    // stream(): the loop throws the same error.
    const stream = model.stream(request)
    const streamed = await t.throwsAsync(async () => {
      for await (const _ of stream) t.fail('no chunk')
    })
    t.is(streamed.code, 'ERR_INVALID_ARGUMENT')
    t.regex(streamed.message, message)
    if (forward) {
      const input = request === null || typeof request !== 'object' ? request : { inputIds: request.inputIds, pixelValues: request.pixelValues, signal: request.signal }
      const forwarded = await t.throwsAsync(model.forward(input), { instanceOf: PaliGemmaError })
      t.is(forwarded.code, 'ERR_INVALID_ARGUMENT', forwarded.message)
      t.regex(forwarded.message, message)
    }
    await stillServes(t, model)
  })
}

test('forward() with sampling options is refused, naming the option', async (t) => {
  const model = await loaded
  await t.throwsAsync(model.forward({ ...base, temperature: 1 }), { code: 'ERR_INVALID_ARGUMENT', message: /`input\.temperature`.*unknown option/ })
  for (const input of [null, undefined, 'ids', [base]]) {
    await t.throwsAsync(model.forward(input), { code: 'ERR_INVALID_ARGUMENT', message: /`input`/ })
  }
  await stillServes(t, model)
})

test('a request option whose getter throws rejects (never throws synchronously) and the model keeps working', async (t) => {
  const model = await loaded
  const bug = new Error('getter bug')
  const request = {
    ...good,
    get temperature() {
      throw bug
    },
  }
  let pending
  t.notThrows(() => {
    pending = model.generate(request)
  })
  const error = await t.throwsAsync(pending, { instanceOf: PaliGemmaError })
  t.is(error.cause, bug)
  await stillServes(t, model)
})

test('request buffers are copied when the call is made: mutating them afterwards changes nothing', async (t) => {
  const model = await loaded
  const inputIds = [...f.inputIds]
  const pixelValues = new Float32Array(f.pixelValues)
  const generated = model.generate({ inputIds, pixelValues, maxNewTokens: 12 })
  const streamed = model.stream({ inputIds, pixelValues, maxNewTokens: 12 }).result
  const forwarded = model.forward({ inputIds, pixelValues })
  inputIds.fill(IMAGE)
  pixelValues.fill(Number.NaN)
  t.deepEqual((await generated).tokenIds, f.generatedIds)
  t.deepEqual((await streamed).tokenIds, f.generatedIds)
  const { logits } = await forwarded
  t.true(logits.every(Number.isFinite))
})

test('extreme but valid sampling values work', async (t) => {
  const model = await loaded
  for (const options of [
    { temperature: 1e6, seed: 1 },
    { temperature: 1e-3, seed: 1 },
    { temperature: 1, topK: 2 ** 32 - 1, seed: 2 },
    { temperature: 1, topP: Number.MIN_VALUE, seed: 3 },
    { repetitionPenalty: 1e30 },
    { repetitionPenalty: 1e-30 },
    { seed: Number.MAX_SAFE_INTEGER, temperature: 1 },
  ]) {
    const result = await model.generate({ ...base, maxNewTokens: 8, ...options })
    // Sampling may pick EOS early; otherwise all 8 tokens come.
    t.true(result.tokenIds.length === 8 || result.finishReason === 'eos', JSON.stringify(options))
    t.true(result.tokenIds.every((id) => Number.isInteger(id) && id >= 0 && id < 512), JSON.stringify(options))
  }
  // A tiny temperature is (nearly) greedy.
  t.deepEqual((await model.generate({ ...good, temperature: 1e-3, seed: 1 })).tokenIds, f.generatedIds)
  await stillServes(t, model)
})

// Regression: `1 / temperature` in f32 overflowed below ~1e-38 and turned every logit into
// ±inf, so the sampler returned the last ids of the vocabulary; it now scales in f64.
test('a temperature below f32 range (1e-40) behaves like greedy decoding', async (t) => {
  const model = await loaded
  for (const temperature of [1e-38, 1e-40, Number.MIN_VALUE]) {
    t.deepEqual((await model.generate({ ...good, temperature, seed: 1 })).tokenIds, f.generatedIds, String(temperature))
  }
})

// Serial, so that the gap probe measures only this test's work on the JS thread.
test.serial('huge and many stop strings are accepted and do not stall the event loop', async (t) => {
  const model = await loadedWithTokenizer
  for (const stop of [['x'.repeat(1_000_000)], Array.from({ length: 10_000 }, (_, i) => `s${i}`), ['\ud800'], ['\0']]) {
    const measure = measureEventLoop()
    const result = await model.generate({ ...base, maxNewTokens: 32, stop })
    const { blockedMs } = measure()
    t.true(result.tokenIds.length >= 1)
    t.true(blockedMs < 50, `event loop blocked for ${blockedMs.toFixed(1)} ms`)
  }
  t.deepEqual((await model.generate(good)).tokenIds, f.generatedIds)
})
