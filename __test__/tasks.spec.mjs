// { image, prompt } generation and the task helpers, on the tiny fixture models (gibberish
// output, real pipeline), the real-vocabulary e2e fixture, and the mask decoder on canned output.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma, decodeSegmentations, preprocessImage, taskPrompt } from '../dist/index.js'
import { FIXTURES, fixtureDir, fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'

const image = join(repo, 'testdata', 'processor', 'chelsea.png')
const vaeTiny = join(repo, 'testdata', 'vae', 'vae-tiny.safetensors')
/** The tiny tokenizer's ids of "caption en\n": `caption`, `▁en`, `\n`. */
const CAPTION_EN = [381, 372, 108]

const models = new Map(FIXTURES.map((name) => [name, PaliGemma.load(fixtureWithTokenizer(name), { vaePath: vaeTiny })]))
const bare = PaliGemma.load(fixtureDir('pg1-tiny-a'))

test.after.always(async () => {
  for (const loaded of [...models.values(), bare]) await (await loaded).dispose()
})

for (const name of FIXTURES) {
  const loaded = models.get(name)

  test(`${name}: { image, prompt } builds [<image>]×P <bos> prompt \\n and preprocesses natively`, async (t) => {
    const model = await loaded
    const { imageTokens, imageTokenId, bosTokenId, imageSize } = model.info
    const result = await model.generate({ image, prompt: 'caption en', maxNewTokens: 6 })
    t.deepEqual(result.promptIds, [...Array(imageTokens).fill(imageTokenId), bosTokenId, ...CAPTION_EN])
    t.deepEqual(result.image, { width: 451, height: 300 })
    t.is(result.finishReason, 'length')
    t.is(result.tokenIds.length, 6)
    t.is(typeof result.text, 'string')
    t.is(result.timings.promptTokens, imageTokens + 4)

    // Sampling at temperature 1 is sensitive to every logit: the same tokens from the hand-built
    // request show that the model saw exactly preprocessImage's pixels and these ids.
    const { pixelValues } = await preprocessImage(image, imageSize)
    const sampling = { temperature: 1, seed: 1234, maxNewTokens: 24 }
    const fromImage = await model.generate({ image, prompt: 'caption en', ...sampling })
    const byHand = await model.generate({ inputIds: result.promptIds, pixelValues, ...sampling })
    t.deepEqual(fromImage.tokenIds, byHand.tokenIds)
    t.is(fromImage.text, byHand.text)
  })

  test(`${name}: task helpers return typed results`, async (t) => {
    const model = await loaded
    const options = { maxNewTokens: 8 }
    const reference = async (prompt) => (await model.generate({ image, prompt, ...options })).text
    t.is(await model.caption(image, options), await reference('caption en'))
    t.is(await model.caption(image, { ...options, lang: 'de' }), await reference('caption de'))
    t.is(await model.ask(image, 'what is this?', options), await reference('answer en what is this?'))
    t.is(await model.ocr(image, options), await reference('ocr'))
    const detections = await model.detect(image, ['cat', 'dog'], options)
    t.true(Array.isArray(detections))
    const segmentations = await model.segment(image, 'cat', options)
    t.true(Array.isArray(segmentations))
  })
}

test('stream() takes { image, prompt } too, and its result reports the prompt and size', async (t) => {
  const model = await models.get('pg1-tiny-a')
  const stream = model.stream({ image, prompt: 'ocr', maxNewTokens: 5 })
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  const result = await stream.result
  t.deepEqual(chunks.map((c) => c.tokenId), result.tokenIds)
  t.is(chunks.map((c) => c.text).join(''), result.text)
  t.deepEqual(result.promptIds.slice(-2), [405, 108]) // "ocr", "\n"
  t.deepEqual(result.image, { width: 451, height: 300 })
})

test('every image kind gives the same generation', async (t) => {
  const model = await models.get('pg1-tiny-a')
  const request = { prompt: 'caption en', temperature: 1, seed: 9, maxNewTokens: 16 }
  const fromPath = await model.generate({ image, ...request })
  const fromBytes = await model.generate({ image: readFileSync(image), ...request })
  t.deepEqual(fromBytes.tokenIds, fromPath.tokenIds)
  const raw = { data: new Uint8Array(40 * 30 * 4).fill(200), width: 40, height: 30, channels: 4 }
  const fromRaw = await model.generate({ image: raw, ...request })
  t.deepEqual(fromRaw.image, { width: 40, height: 30 })
})

test('a bad image fails its request only; the queue goes on in order', async (t) => {
  const model = await models.get('pg1-tiny-a')
  const bad = model.generate({ image: Buffer.from('not an image'), prompt: 'ocr', maxNewTokens: 4 })
  const tooBig = model.caption(image, { maxPixels: 1000, maxNewTokens: 4 })
  const good = model.caption(image, { maxNewTokens: 4 })
  await t.throwsAsync(bad, { code: 'ERR_INVALID_IMAGE', message: /unrecognised image format/ })
  await t.throwsAsync(tooBig, { code: 'ERR_INVALID_IMAGE', message: /exceeds the limit/ })
  t.is(typeof (await good), 'string')
})

test('an { image, prompt } request can be aborted while queued', async (t) => {
  const model = await models.get('pg1-tiny-a')
  const controller = new AbortController()
  const first = model.generate({ image, prompt: 'ocr', maxNewTokens: 200 })
  const second = model.caption(image, { signal: controller.signal, maxNewTokens: 4 })
  controller.abort()
  await t.throwsAsync(second, { name: 'AbortError' })
  t.is((await first).tokenIds.length > 0, true)
})

test('a model without tokenizer.json refuses { image, prompt } clearly', async (t) => {
  const model = await bare
  t.false(model.info.hasTokenizer)
  await t.throwsAsync(model.generate({ image, prompt: 'caption en' }), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
  await t.throwsAsync(model.caption(image), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
})

test('invalid requests and task arguments are ERR_INVALID_ARGUMENT', async (t) => {
  const model = await models.get('pg1-tiny-a')
  const invalid = { code: 'ERR_INVALID_ARGUMENT' }
  await t.throwsAsync(model.generate({ image, prompt: 'ocr', inputIds: [1] }), invalid)
  await t.throwsAsync(model.generate({ image, prompt: 42 }), invalid)
  await t.throwsAsync(model.generate({ image: 42, prompt: 'ocr' }), invalid)
  await t.throwsAsync(model.generate({ image, prompt: 'ocr', colour: true }), invalid)
  await t.throwsAsync(model.generate({ image, prompt: 'ocr', maxNewTokens: 10_000 }), { ...invalid, message: /512 positions/ })
  await t.throwsAsync(model.caption(image, { lang: 'e n' }), invalid)
  await t.throwsAsync(model.ask(image, '   '), invalid)
  await t.throwsAsync(model.detect(image, []), invalid)
  await t.throwsAsync(model.detect(image, ['cat', '']), invalid)
  await t.throwsAsync(model.detect(image, ['cat ; dog']), invalid)
  const missing = await t.throwsAsync(model.segment(image, 'cat', { vaePath: join(repo, 'no-such-vae.safetensors') }), invalid)
  t.regex(missing.message, /vaePath.*convert-vae vae-oid\.npz vae-oid\.safetensors/s)
  const unset = await t.throwsAsync((await bare).segment(image, 'cat'), invalid)
  t.regex(unset.message, /`vaePath`: is required.*convert-vae/s)
})

test('taskPrompt builds the documented prefixes', (t) => {
  t.is(taskPrompt.caption(), 'caption en')
  t.is(taskPrompt.caption('fr'), 'caption fr')
  t.is(taskPrompt.describe(), 'describe en')
  t.is(taskPrompt.answer('how many cats?', 'de'), 'answer de how many cats?')
  t.is(taskPrompt.ocr(), 'ocr')
  t.is(taskPrompt.detect('cat'), 'detect cat')
  t.is(taskPrompt.detect(['cat', 'red car']), 'detect cat ; red car')
  t.is(taskPrompt.detect('cat;dog ; bird'), 'detect cat ; dog ; bird')
  t.is(taskPrompt.segment(['cat']), 'segment cat')
})

// ---------------------------------------------------------------------------------------------
// masks: canned segmentation output through the real decoder and pasting

/** A tensor from a .safetensors file: F32, U8 or I64 (as numbers). */
function tensor(path, name) {
  const buf = readFileSync(path)
  const headerLen = Number(buf.readBigUInt64LE(0))
  const info = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'))[name]
  const [begin, end] = info.data_offsets
  const bytes = buf.buffer.slice(buf.byteOffset + 8 + headerLen + begin, buf.byteOffset + 8 + headerLen + end)
  if (info.dtype === 'I64') return { shape: info.shape, data: Array.from(new BigInt64Array(bytes), Number) }
  return { shape: info.shape, data: new { F32: Float32Array, U8: Uint8Array }[info.dtype](bytes) }
}

/** Python's round(), ties to even. */
const roundHalfEven = (v) => (v - Math.floor(v) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v))
/** The smallest location bin that maps to pixel `px` on a side of `side` pixels. */
const binFor = (px, side) => {
  const bin = Array.from({ length: 1024 }, (_, b) => b).find((b) => roundHalfEven((b / 1024) * side) === px)
  if (bin === undefined) throw new Error(`no bin maps to ${px} of ${side}`)
  return bin
}
const loc = (bin) => `<loc${String(bin).padStart(4, '0')}>`
const seg = (v) => `<seg${String(v).padStart(3, '0')}>`

test('decodeSegmentations equals the Python reference decoder + PIL paste, pixel for pixel', async (t) => {
  const expectedPath = join(repo, 'testdata', 'vae', 'expected.safetensors')
  const indices = tensor(expectedPath, 'indices').data
  const boxes = tensor(expectedPath, 'boxes').data // x1, y1, x2, y2 on a 96×80 image
  const pasted = tensor(expectedPath, 'pasted_bicubic')
  const [, height, width] = pasted.shape
  // Objects 0 and 1 (object 2's box leaves the image, which location tokens cannot express).
  const objects = [0, 1].map((o) => {
    const [x1, y1, x2, y2] = boxes.slice(o * 4, o * 4 + 4)
    const box = [binFor(y1, height), binFor(x1, width), binFor(y2, height), binFor(x2, width)].map(loc).join('')
    return `${box}${indices.slice(o * 16, o * 16 + 16).map(seg).join('')} object ${o}`
  })
  const text = `${objects.join(' ; ')} ; ${loc(10)}${loc(10)}${loc(500)}${loc(500)} no mask`
  const result = await decodeSegmentations(text, { width, height, vaePath: vaeTiny })
  t.deepEqual(result.map((r) => r.label), ['object 0', 'object 1', 'no mask'])
  for (const o of [0, 1]) {
    const { mask, box } = result[o]
    t.deepEqual([mask.width, mask.height, mask.data.length], [width, height, width * height])
    t.deepEqual([box.x, box.y, box.x + box.width, box.y + box.height], boxes.slice(o * 4, o * 4 + 4))
    const want = pasted.data.subarray(o * width * height, (o + 1) * width * height)
    t.true(Buffer.from(mask.data).equals(Buffer.from(want)), `mask ${o} differs from the reference`)
    let inside = 0
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const v = mask.data[y * width + x]
        t.true(v === 0 || v === 255)
        const inBox = x >= box.x && x < box.x + box.width && y >= box.y && y < box.y + box.height
        if (!inBox && v !== 0) t.fail(`pixel (${x}, ${y}) outside the box is set`)
        if (inBox && v) inside++
      }
    }
    t.true(inside > 0, `mask ${o} has pixels inside its box`)
  }
  t.is(result[2].mask, null)
  t.is(result[2].segIndices, null)
})

test('decodeSegmentations: no objects, and bad vaePath values', async (t) => {
  t.deepEqual(await decodeSegmentations('no objects here', { width: 10, height: 10, vaePath: vaeTiny }), [])
  const text = `${loc(0)}${loc(0)}${loc(512)}${loc(512)}${Array(16).fill(seg(1)).join('')} cat`
  const size = { width: 10, height: 10 }
  await t.throwsAsync(decodeSegmentations(text, size), { code: 'ERR_INVALID_ARGUMENT', message: /vaePath/ })
  await t.throwsAsync(decodeSegmentations(text, { ...size, vaePath: join(repo, 'missing.safetensors') }), {
    code: 'ERR_INVALID_ARGUMENT',
    message: /vaePath.*convert-vae/s,
  })
  const npz = await t.throwsAsync(decodeSegmentations(text, { ...size, vaePath: join(fixtureDir('pg1-tiny-a'), 'checkpoint.npz') }))
  t.is(npz.code, 'ERR_INVALID_ARGUMENT')
  t.regex(npz.message, /unconverted \.npz/)
  const notVae = await t.throwsAsync(decodeSegmentations(text, { ...size, vaePath: join(fixtureDir('pg1-tiny-a'), 'model.safetensors') }))
  t.is(notVae.code, 'ERR_MODEL_LOAD')
  t.regex(notVae.message, /mask decoder/)
  await t.throwsAsync(decodeSegmentations(text, { ...size, vaePath: vaeTiny, maxPixels: 50 }), { code: 'ERR_INVALID_ARGUMENT' })
})

// ---------------------------------------------------------------------------------------------
// end to end: real vocabulary, real tokenizer, image file → caption

test('e2e: caption() of the real-vocabulary fixture equals transformers, text and ids', async (t) => {
  const fixture = join(repo, 'testdata', 'e2e-caption')
  const meta = JSON.parse(readFileSync(join(fixture, 'meta.json'), 'utf8'))
  const dir = mkdtempSync(join(tmpdir(), 'paligemma-e2e-'))
  for (const file of ['config.json', 'model.safetensors']) symlinkSync(join(fixture, file), join(dir, file))
  const gemma = join(repo, 'node_modules', '@lenml', 'tokenizer-gemini', 'models', 'tokenizer.json')
  execFileSync(process.execPath, [join(repo, 'scripts', 'make-paligemma-tokenizer.mjs'), gemma, join(dir, 'tokenizer.json')])
  const model = await PaliGemma.load(dir)
  try {
    const photo = join(fixture, 'image.png')
    t.is(await model.caption(photo, { maxNewTokens: 8 }), meta.generated_text_skip_special)
    const result = await model.generate({ image: photo, prompt: 'caption en', maxNewTokens: 8 })
    t.deepEqual(result.tokenIds, meta.generated_ids)
    t.deepEqual(result.promptIds, [...Array(meta.n_image_tokens).fill(257152), ...meta.prompt_ids_after_image])
    t.deepEqual(result.promptIds, tensor(join(fixture, 'expected.safetensors'), 'input_ids').data)
    t.is(result.text, meta.generated_text_skip_special)
    // <loc>/<seg> literals in a prompt are the location and mask tokens (non-special added
    // tokens), as in the Hugging Face processor; <image> and <bos> literals stay plain text.
    const literal = await model.generate({ image: photo, prompt: 'segment <loc0001><seg017> <image>', maxNewTokens: 1 })
    const text = literal.promptIds.slice(meta.n_image_tokens + 1)
    t.true(text.includes(256001) && text.includes(257041))
    t.false(text.includes(257152) || text.includes(2))
  } finally {
    await model.dispose()
    rmSync(dir, { recursive: true, force: true }) // the generated tokenizer is 17 MB
  }
})
