// Hostile inputs through the JS API (issue 9): every bad request, model folder and image gets
// the right error code and a message that names the problem, and the same model still serves a
// good request afterwards. Nothing here may crash, hang or allocate what the input claims.
import { copyFileSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import * as api from '../dist/index.js'
import { native } from '../dist/src/native.js'
import { measureEventLoop } from './helpers/eventloop.mjs'
import { fixture, fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'
import { MB, modelThreadCount, waitFor } from './helpers/memory.mjs'
import { noisyPng, onePixelPng, png } from './helpers/png.mjs'
import { decodeSafetensors, encodeSafetensors, rewrittenFixture, tempDir } from './helpers/safetensors-write.mjs'

const { PaliGemma, PaliGemmaError } = api
const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }
const good = { ...base, maxNewTokens: 12 }
const IMAGE = 500 // pg1-tiny-a: image_token_index 500, vocab 512, 512 positions, 16 image tokens

const loaded = PaliGemma.load(f.dir)
const withTokenizerDir = fixtureWithTokenizer('pg1-tiny-a')
const loadedWithTokenizer = PaliGemma.load(withTokenizerDir)

test.after.always(async () => {
  await Promise.all([(await loaded).dispose(), (await loadedWithTokenizer).dispose()])
  rmSync(withTokenizerDir, { recursive: true, force: true })
})

/** The model still gives the recorded greedy tokens. */
async function stillServes(t, model) {
  const result = await model.generate(good)
  t.deepEqual(result.tokenIds, f.generatedIds, 'the model still serves a good request')
}

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

// ---------------------------------------------------------------------------------------------
// Model folders

/** The fixture's tensors, for rewriting. */
const fixtureTensors = () => decodeSafetensors(readFileSync(join(f.dir, 'model.safetensors'))).tensors

/** A copy of the fixture whose model.safetensors is `bytes`. */
function withWeightsFile(bytes, label) {
  const dir = rewrittenFixture(f.dir, { label })
  writeFileSync(join(dir, 'model.safetensors'), bytes)
  return dir
}

function headerOnly(length, body = Buffer.alloc(92)) {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(length)
  return Buffer.concat([b, body])
}

/** A sharded copy of the fixture: vision tensors in shard 2, the rest in shard 1. */
function sharded({ dropShard2 = false, index } = {}) {
  const dir = tempDir('sharded')
  copyFileSync(join(f.dir, 'config.json'), join(dir, 'config.json'))
  const tensors = fixtureTensors()
  const shards = [{}, {}]
  const weightMap = {}
  for (const [name, tensor] of Object.entries(tensors)) {
    const shard = name.startsWith('vision_tower') ? 1 : 0
    shards[shard][name] = tensor
    weightMap[name] = `model-0000${shard + 1}-of-00002.safetensors`
  }
  writeFileSync(join(dir, 'model-00001-of-00002.safetensors'), encodeSafetensors(shards[0]))
  if (!dropShard2) writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), encodeSafetensors(shards[1]))
  writeFileSync(join(dir, 'model.safetensors.index.json'), index ?? JSON.stringify({ metadata: {}, weight_map: weightMap }))
  return dir
}

const config = (edit) => () => rewrittenFixture(f.dir, { editConfig: edit, label: 'config' })
const weights = (edit) => () => rewrittenFixture(f.dir, { edit, label: 'weights' })

// [make the folder, message pattern]; each must fail with ERR_MODEL_LOAD, fast.
const badFolders = {
  'a safetensors header longer than the file': [() => withWeightsFile(headerOnly(1_000_000n), 'long-header'), /model\.safetensors.*(header|length)/],
  'a safetensors header length of 2^63': [() => withWeightsFile(headerOnly(2n ** 63n), 'huge-header'), /model\.safetensors.*header/],
  'a safetensors header that is not JSON': [() => withWeightsFile(headerOnly(50n, Buffer.alloc(92, 0x41)), 'bad-json'), /model\.safetensors.*JSON/],
  'a zero-byte model.safetensors': [() => withWeightsFile(Buffer.alloc(0), 'empty'), /model\.safetensors.*0 bytes/],
  'a model.safetensors cut in half': [
    () => withWeightsFile(readFileSync(join(f.dir, 'model.safetensors')).subarray(0, 300_000), 'truncated'),
    /model\.safetensors/,
  ],
  'a tensor offset past the end of the data': [
    weights((t) => {
      t['language_model.model.norm.weight'].dataOffsets = [0, 10 ** 9]
    }),
    /model\.safetensors.*language_model\.model\.norm\.weight/,
  ],
  'a tensor whose shape disagrees with the config': [
    weights((t) => {
      t['language_model.model.layers.1.mlp.up_proj.weight'].shape = [64, 128]
    }),
    /language_model\.layers\.1\.mlp\.up_proj\.weight.*shape \[64, 128\].*expected \[128, 64\]/,
  ],
  'an embedding with one row too few': [
    weights((t) => {
      const e = t['language_model.model.embed_tokens.weight']
      e.shape = [511, 64]
      e.bytes = e.bytes.subarray(0, 511 * 64 * 4)
    }),
    /embed_tokens\.weight.*\[511, 64\].*expected \[512, 64\]/,
  ],
  'a missing tensor': [
    weights((t) => {
      delete t['language_model.model.layers.1.self_attn.v_proj.weight']
    }),
    /language_model\.layers\.1\.self_attn\.v_proj\.weight.*missing/,
  ],
  'a tensor of an unsupported dtype': [
    weights((t) => {
      t['language_model.model.norm.weight'].dtype = 'I32'
    }),
    /norm\.weight.*dtype I32/,
  ],
  'a shard index naming a missing file': [() => sharded({ dropShard2: true }), /model-00002-of-00002\.safetensors.*does not exist/],
  'a shard index that is not JSON': [() => sharded({ index: '{"weight_map": ' }), /model\.safetensors\.index\.json/],
  'a shard index with an empty weight_map': [() => sharded({ index: '{"weight_map": {}}' }), /weight_map/],
  'no weights at all': [
    () => {
      const dir = tempDir('noweights')
      copyFileSync(join(f.dir, 'config.json'), join(dir, 'config.json'))
      return dir
    },
    /model\.safetensors/,
  ],
  'config.json that is not JSON': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'config' })
    writeFileSync(join(dir, 'config.json'), '{ "model_type": "paligemma", ')
    return dir
  }, /config.*JSON/],
  'config.json that is an array': [config((c) => [c]), /config\.json.*object/],
  'an unknown model_type': [config((c) => ({ ...c, model_type: 'llava' })), /model_type.*llava/],
  'an unknown text model_type': [config((c) => void (c.text_config.model_type = 'gemma3')), /text_config\.model_type.*gemma3/],
  'a string where a size belongs': [config((c) => void (c.text_config.hidden_size = '64')), /text_config\.hidden_size.*"64"/],
  'a negative layer count': [config((c) => void (c.text_config.num_hidden_layers = -2)), /text_config\.num_hidden_layers.*-2/],
  'a fractional layer count': [config((c) => void (c.text_config.num_hidden_layers = 2.5)), /text_config\.num_hidden_layers.*2\.5/],
  'text_config as an array': [config((c) => void (c.text_config = [1])), /text_config.*object/],
  '10^9 decoder layers': [config((c) => void (c.text_config.num_hidden_layers = 1e9)), /text_config\.num_hidden_layers.*1000000000.*maximum/],
  'a vocabulary of 10^12': [config((c) => void (c.text_config.vocab_size = c.vocab_size = 1e12)), /vocab_size.*1000000000000.*maximum/],
  'a vocabulary of 1e300': [config((c) => void (c.text_config.vocab_size = c.vocab_size = 1e300)), /vocab_size/],
  'a hidden size of 10^9': [config((c) => void (c.text_config.hidden_size = 1e9)), /text_config\.hidden_size.*maximum/],
  'an intermediate size of 10^12': [config((c) => void (c.text_config.intermediate_size = 1e12)), /text_config\.intermediate_size.*maximum/],
  '10^9 attention heads': [config((c) => void (c.text_config.num_attention_heads = 1e9)), /num_attention_heads/],
  '10^15 positions': [config((c) => void (c.text_config.max_position_embeddings = 1e15)), /max_position_embeddings.*maximum/],
  'an image size of 100000': [config((c) => void (c.vision_config.image_size = 100000)), /vision_config\.image_size.*maximum/],
  'a zero patch size': [config((c) => void (c.vision_config.patch_size = 0)), /vision_config\.patch_size/],
  '10^9 vision layers': [config((c) => void (c.vision_config.num_hidden_layers = 1e9)), /vision_config\.num_hidden_layers.*maximum/],
  'a malformed tokenizer.json': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), '{"version": "1.0", "model": ')
    return dir
  }, /tokenizer\.json/],
  'an empty tokenizer.json': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), '')
    return dir
  }, /tokenizer\.json/],
  'a tokenizer.json that is a folder': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    mkdirSync(join(dir, 'tokenizer.json'))
    return dir
  }, /tokenizer\.json/],
  'a tokenizer.json that is a dangling link': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    symlinkSync(join(dir, 'no-such-blob'), join(dir, 'tokenizer.json'))
    return dir
  }, /tokenizer\.json/],
  'a tokenizer that does not match the config': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { type: 'WordLevel', vocab: { a: 0 }, unk_token: 'a' } }))
    return dir
  }, /tokenizer/],
}

for (const [name, [make, message]] of Object.entries(badFolders)) {
  test.serial(`load of a folder with ${name}: ERR_MODEL_LOAD, fast`, async (t) => {
    const dir = make()
    const threads = modelThreadCount()
    const rss = process.memoryUsage().rss
    const started = performance.now()
    const error = await t.throwsAsync(PaliGemma.load(dir), { instanceOf: PaliGemmaError })
    const elapsed = performance.now() - started
    t.is(error.code, 'ERR_MODEL_LOAD', error.message)
    t.regex(error.message, message)
    // Refused from the header or config, before anything of the claimed size is allocated.
    t.true(elapsed < 2000, `took ${elapsed.toFixed(0)} ms`)
    t.true(process.memoryUsage().rss - rss < 64 * MB, 'no large allocation')
    t.true(await waitFor(() => modelThreadCount() === threads), 'the failed load left no thread behind')
    rmSync(dir, { recursive: true, force: true })
  })
}

test.serial('after every bad folder, a good load and the already-loaded model still work', async (t) => {
  const model = await PaliGemma.load(f.dir)
  await stillServes(t, model)
  await model.dispose()
  await stillServes(t, await loaded)
})

test.serial('a folder without tokenizer.json loads; text features say the tokenizer is needed', async (t) => {
  const model = await loaded
  t.false(model.info.hasTokenizer)
  await t.throwsAsync(model.generate({ ...good, stop: ['x'] }), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
  if (typeof api.preprocessImage === 'function') {
    await t.throwsAsync(model.generate({ image: onePixelPng(), prompt: 'caption en' }), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
  }
  await stillServes(t, model)
})

test.serial('a nonexistent folder, a file instead of a folder: ERR_MODEL_LOAD naming the path', async (t) => {
  const gone = tempDir('gone')
  await t.throwsAsync(PaliGemma.load(join(gone, 'missing')), { code: 'ERR_MODEL_LOAD', message: /missing.*config\.json|config\.json.*missing/s })
  rmSync(gone, { recursive: true, force: true })
  await t.throwsAsync(PaliGemma.load(join(f.dir, 'config.json')), { code: 'ERR_MODEL_LOAD', message: /config\.json/ })
})

// ---------------------------------------------------------------------------------------------
// Images (when this build has the image API)

const hasImages = (() => {
  try {
    return typeof api.preprocessImage === 'function' && typeof native().preprocessImage === 'function'
  } catch {
    return false
  }
})()
const imageTest = hasImages ? test : test.skip

const noisy = noisyPng(64)
const invalidImages = {
  'a truncated PNG (cut in the header)': [onePixelPng().subarray(0, 30), /truncated/],
  'a truncated PNG (cut in the pixel data)': [noisy.subarray(0, Math.floor(noisy.length * 0.6)), /PNG|truncated|corrupt/],
  'a corrupt PNG': [Buffer.concat([onePixelPng().subarray(0, 40), Buffer.alloc(20, 7)]), /corrupt|PNG/],
  'a PNG declaring 100000×100000': [png(100000, 100000, Buffer.from([0, 1, 2, 3])), /100000×100000.*exceeds the limit/],
  'an empty buffer': [new Uint8Array(0), /empty/],
  'bytes that are no image': [Buffer.from('definitely not an image'), /unrecognised image format/],
  'zero-size raw pixels': [{ data: new Uint8Array(0), width: 0, height: 0, channels: 3 }, /zero-sized/],
  'raw pixels of the wrong length': [{ data: new Uint8Array(5), width: 2, height: 2, channels: 3 }, /5 bytes.*2×2×3 needs 12/],
  'raw pixels with 2 channels': [{ data: new Uint8Array(8), width: 2, height: 2, channels: 2 }, /1, 3 or 4 channels/],
  'raw pixels declaring 100000×100000': [{ data: new Uint8Array(3), width: 100000, height: 100000, channels: 3 }, /exceeds the limit/],
  'a path that does not exist': [join(repo, 'no-such-image.png'), /no-such-image\.png/],
  'a folder as the path': [repo, /cannot read/],
}

for (const [name, [image, message]] of Object.entries(invalidImages)) {
  imageTest(`image input with ${name}: ERR_INVALID_IMAGE`, async (t) => {
    const started = performance.now()
    const error = await t.throwsAsync(api.preprocessImage(image, 32), { instanceOf: PaliGemmaError })
    t.is(error.code, 'ERR_INVALID_IMAGE', error.message)
    t.regex(error.message, message)
    t.true(performance.now() - started < 2000, 'refused fast')
    const model = await loadedWithTokenizer
    const generated = await t.throwsAsync(model.generate({ image, prompt: 'caption en', maxNewTokens: 4 }), { instanceOf: PaliGemmaError })
    t.is(generated.code, 'ERR_INVALID_IMAGE', generated.message)
    t.regex(generated.message, message)
    t.deepEqual((await model.generate(good)).tokenIds, f.generatedIds)
    t.is((await model.generate({ image: onePixelPng(), prompt: 'caption en', maxNewTokens: 4 })).tokenIds.length > 0, true)
  })
}

imageTest('a 1×1 image works, encoded and raw', async (t) => {
  for (const image of [onePixelPng(), { data: new Uint8Array([200, 30, 60]), width: 1, height: 1, channels: 3 }]) {
    const { pixelValues, width, height } = await api.preprocessImage(image, 32)
    t.is(pixelValues.length, 3 * 32 * 32)
    t.deepEqual([width, height], [1, 1])
    t.true(pixelValues.every((v) => v >= -1 && v <= 1))
    const model = await loadedWithTokenizer
    const result = await model.generate({ image, prompt: 'caption en', maxNewTokens: 4 })
    t.deepEqual(result.image, { width: 1, height: 1 })
    t.is(result.tokenIds.length > 0, true)
  }
})

imageTest('the pixel limit is an option: maxPixels refuses a larger image', async (t) => {
  const image = noisyPng(64)
  await t.throwsAsync(api.preprocessImage(image, 32, { maxPixels: 64 * 64 - 1 }), { code: 'ERR_INVALID_IMAGE', message: /exceeds the limit/ })
  const ok = await api.preprocessImage(image, 32, { maxPixels: 64 * 64 })
  t.deepEqual([ok.width, ok.height], [64, 64])
  const model = await loadedWithTokenizer
  await t.throwsAsync(model.generate({ image, prompt: 'caption en', maxPixels: 100 }), { code: 'ERR_INVALID_IMAGE' })
  for (const maxPixels of [0, -1, 1.5, Number.NaN, '100']) {
    await t.throwsAsync(api.preprocessImage(image, 32, { maxPixels }), { code: 'ERR_INVALID_ARGUMENT', message: /`maxPixels`/ })
  }
})

imageTest('wrong image argument types are ERR_INVALID_ARGUMENT', async (t) => {
  const model = await loadedWithTokenizer
  for (const image of [42, null, undefined, '', { data: [1, 2, 3], width: 1, height: 1, channels: 3 }, { data: new Uint8Array(3), width: -1, height: 1, channels: 3 }]) {
    await t.throwsAsync(api.preprocessImage(image, 32), { code: 'ERR_INVALID_ARGUMENT', message: /`image/ })
    await t.throwsAsync(model.generate({ image, prompt: 'caption en' }), { code: 'ERR_INVALID_ARGUMENT', message: /`image/ })
  }
  await t.throwsAsync(model.generate({ image: onePixelPng(), prompt: 42 }), { code: 'ERR_INVALID_ARGUMENT', message: /`prompt`/ })
  await t.throwsAsync(model.generate({ image: onePixelPng(), prompt: 'x', inputIds: f.inputIds }), { code: 'ERR_INVALID_ARGUMENT', message: /not both/ })
  for (const size of [0, -1, 1.5, 5000, Number.NaN]) {
    await t.throwsAsync(api.preprocessImage(onePixelPng(), size), { code: 'ERR_INVALID_ARGUMENT', message: /`size`/ })
  }
  t.deepEqual((await model.generate(good)).tokenIds, f.generatedIds)
})

if (!hasImages) {
  test('image inputs (skipped: this build has no preprocessImage)', (t) => {
    t.log('the loaded addon or package has no image API; the image tests were skipped')
    t.pass()
  })
}

test('a tokenizer-bearing model folder is still usable after the tokenizer tests', async (t) => {
  const model = await loadedWithTokenizer
  t.true(model.info.hasTokenizer)
  t.deepEqual((await model.generate(good)).tokenIds, f.generatedIds)
})
