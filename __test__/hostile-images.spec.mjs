// Hostile images through the JS API (issue 9): every bad image gets ERR_INVALID_IMAGE with a
// message that names the problem, from preprocessImage and from generate alike, and the model
// still serves afterwards.
import { rmSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import * as api from '../dist/index.js'
import { native } from '../dist/src/native.js'
import { fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'
import { f, good } from './helpers/hostile.mjs'
import { noisyPng, onePixelPng, png } from './helpers/png.mjs'

const { PaliGemma, PaliGemmaError } = api

const withTokenizerDir = fixtureWithTokenizer('pg1-tiny-a')
const loadedWithTokenizer = PaliGemma.load(withTokenizerDir)

test.after.always(async () => {
  await (await loadedWithTokenizer).dispose()
  rmSync(withTokenizerDir, { recursive: true, force: true })
})

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
