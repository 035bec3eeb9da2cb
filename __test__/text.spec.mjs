// Text output and stop strings, with the tiny tokenizer copied next to a fixture model.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma } from '../dist/index.js'
import { fixture, fixtureWithTokenizer } from './helpers/fixtures.mjs'

const f = fixture('pg1-tiny-a')
const base = { inputIds: f.inputIds, pixelValues: f.pixelValues, maxNewTokens: 12 }
const loaded = PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'))

test.after.always(async () => {
  await (await loaded).dispose()
})

// The tiny tokenizer: 108 is "\n", 404 is "oc".
const expectedText = '\n\n' + 'oc'.repeat(10)

test('the model loads tokenizer.json and decodes text', async (t) => {
  const model = await loaded
  t.true(model.info.hasTokenizer)
  const result = await model.generate(base)
  t.deepEqual(result.tokenIds, f.generatedIds)
  t.is(result.text, expectedText)
})

test('stream chunks carry the text each token completes', async (t) => {
  const model = await loaded
  const stream = model.stream(base)
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  t.deepEqual(chunks.map((c) => c.text), ['\n', '\n', ...Array(10).fill('oc')])
  t.is(chunks.map((c) => c.text).join(''), (await stream.result).text)
})

test('a stop string ends generation and is not part of the text', async (t) => {
  const model = await loaded
  const result = await model.generate({ ...base, stop: ['coc'] })
  t.is(result.finishReason, 'stop')
  t.is(result.text, '\n\no')
  t.deepEqual(result.tokenIds, f.generatedIds.slice(0, 4), 'the tokens that formed the stop string are kept')
  const stream = model.stream({ ...base, stop: ['coc'] })
  const texts = []
  for await (const chunk of stream) texts.push(chunk.text)
  t.is(texts.join(''), '\n\no', 'no chunk shows part of the stop string')
  t.is((await stream.result).finishReason, 'stop')
})

test('the earliest of several stop strings wins; unmatched ones change nothing', async (t) => {
  const model = await loaded
  t.like(await model.generate({ ...base, stop: ['ococ', '\n\n'] }), { text: '', finishReason: 'stop' })
  t.like(await model.generate({ ...base, stop: ['zzz', 'ocx'] }), { text: expectedText, finishReason: 'length' })
  const heldBack = await model.generate({ ...base, stop: ['ocz'] })
  t.is(heldBack.text, expectedText, 'text held back as a possible stop is released at the end')
})

test('a tokenizer that does not fit the model fails the load', async (t) => {
  const dir = fixtureWithTokenizer('pg2-tiny-a')
  writeFileSync(join(dir, 'tokenizer.json'), '{"not": "a tokenizer"}')
  await t.throwsAsync(PaliGemma.load(dir), { code: 'ERR_MODEL_LOAD', message: /tokenizer/ })
})
