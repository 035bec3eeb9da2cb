// paligemma serve, second part (issue 21): /v1/completions, /v1/segment with masks as COCO RLE,
// segment prompts on the chat route, and remote image URLs fetched within limits.
import { createServer } from 'node:http'
import { join } from 'node:path'

import test from 'ava'
import OpenAI from 'openai'

import { PaliGemma, decodeSegmentations, maskToRle, rleToMask, serve } from '../dist/index.js'
import { structured } from '../dist/src/serve/generation.js'
import { fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'
import { noisyPng } from './helpers/png.mjs'

const image = noisyPng(32)
const dataUrl = `data:image/png;base64,${image.toString('base64')}`
const modelId = 'tiny-paligemma'
const vaePath = join(repo, 'testdata', 'vae', 'vae-tiny.safetensors')

// A server of images for the remote-URL tests: /cat.png, /missing, /slow (never answers), /huge.
const images = createServer((req, res) => {
  if (req.url === '/cat.png') res.writeHead(200, { 'content-type': 'image/png' }).end(image)
  else if (req.url === '/redirect') res.writeHead(302, { location: '/cat.png' }).end()
  else if (req.url === '/huge') {
    res.writeHead(200, { 'content-type': 'image/png' })
    const chunk = Buffer.alloc(16_384)
    const push = () => res.write(chunk) && !res.destroyed && setImmediate(push)
    res.on('drain', push)
    push()
  } else if (req.url === '/slow') res.flushHeaders()
  else res.writeHead(404).end()
})

const ready = (async () => {
  await new Promise((resolve) => images.listen(0, '127.0.0.1', resolve))
  const model = await PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'))
  const withVae = await serve(model, { modelId, port: 0, vaePath, remoteImages: { timeoutMs: 400, maxBytes: 200_000 } })
  const plain = await serve(model, { modelId, port: 0 })
  return { model, withVae, plain, imagesUrl: `http://127.0.0.1:${images.address().port}` }
})()

test.after.always(async () => {
  const { model, withVae, plain } = await ready
  await withVae.close(0)
  await plain.close(0)
  await model.dispose()
  images.closeAllConnections()
  images.close()
})

const post = async (url, path, body) => fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
const expected = async (prompt, options = {}) => (await ready).model.generate({ image, prompt, ...options })

const loc = (bin) => `<loc${String(bin).padStart(4, '0')}>`
const seg = (v) => `<seg${String(v).padStart(3, '0')}>`

test('maskToRle writes COCO uncompressed RLE (column-major, outside first) and rleToMask reads it back', (t) => {
  // 3 wide, 2 high; column-major pixels: (0,0)=0 (0,1)=1 | (1,0)=1 (1,1)=1 | (2,0)=0 (2,1)=0
  const mask = { width: 3, height: 2, data: Uint8Array.from([0, 255, 0, 255, 255, 0]) }
  const rle = maskToRle(mask)
  t.deepEqual(rle, { size: [2, 3], counts: [1, 3, 2] })
  t.deepEqual(rleToMask(rle), mask)
  t.deepEqual(maskToRle({ width: 2, height: 1, data: Uint8Array.from([255, 255]) }).counts, [0, 2], 'a mask starting inside starts with an empty run')
  t.deepEqual(maskToRle({ width: 0, height: 0, data: new Uint8Array(0) }).counts, [0])
  t.throws(() => maskToRle({ width: 2, height: 2, data: new Uint8Array(3) }), { code: 'ERR_INVALID_ARGUMENT', message: /width × height/ })
  t.throws(() => rleToMask({ size: [2, 2], counts: [1, 2] }), { code: 'ERR_INVALID_ARGUMENT', message: /add up to 3/ })
  t.throws(() => rleToMask({ size: [2, 2], counts: [5] }), { code: 'ERR_INVALID_ARGUMENT' })
  t.throws(() => rleToMask({ size: [2, 2], counts: [-1, 5] }), { code: 'ERR_INVALID_ARGUMENT' })
})

test('segment output becomes boxes and RLE masks equal to decodeSegmentations (server without a VAE: boxes, mask null)', async (t) => {
  const text = `${loc(100)}${loc(200)}${loc(700)}${loc(900)}${Array.from({ length: 16 }, (_, i) => seg(i * 7)).join('')} cat ; ${loc(1)}${loc(2)}${loc(3)}${loc(4)} dog`
  const result = { text, image: { width: 96, height: 80 } }
  const want = await decodeSegmentations(text, { width: 96, height: 80, vaePath })
  const got = await structured('segment cat ; dog', result, { vaePath })
  t.is(got.segmentations.length, 2)
  t.deepEqual(rleToMask(got.segmentations[0].mask), want[0].mask)
  t.true(want[0].mask.data.some((v) => v === 255), 'the mask has pixels set')
  t.deepEqual({ ...got.segmentations[0], mask: null }, { ...want[0], mask: null })
  t.is(got.segmentations[1].mask, null)
  const noVae = await structured('segment cat ; dog', result, {})
  t.deepEqual(noVae.segmentations.map((s) => [s.label, s.mask, s.segIndices?.length ?? null]), [['cat', null, 16], ['dog', null, null]])
  t.is(await structured('caption en', result, { vaePath }), undefined)
})

test('POST /v1/segment equals model.segment with masks as RLE; 501 without a VAE; bad labels 400', async (t) => {
  const { model, withVae, plain } = await ready
  const want = await model.segment(image, ['cat'], { vaePath, maxNewTokens: 24 })
  const res = await post(withVae.url, '/v1/segment', { image: dataUrl, labels: ['cat'], max_tokens: 24 })
  t.is(res.status, 200)
  const got = await res.json()
  t.deepEqual(got.segmentations, JSON.parse(JSON.stringify(want.map((s) => ({ ...s, mask: s.mask ? maskToRle(s.mask) : null })))))
  t.is(typeof got.text, 'string')
  t.is(typeof got.usage.completion_tokens, 'number')
  const refused = await post(plain.url, '/v1/segment', { image: dataUrl, labels: ['cat'] })
  t.is(refused.status, 501)
  t.is((await refused.json()).error.code, 'vae_not_configured')
  const bad = await post(withVae.url, '/v1/segment', { image: dataUrl, labels: [] })
  t.is(bad.status, 400)
  t.is((await bad.json()).error.param, 'labels')
})

test('OpenAI client: completions.create with the image as an extension field, whole and streamed', async (t) => {
  const { withVae } = await ready
  const client = new OpenAI({ baseURL: `${withVae.url}/v1`, apiKey: 'unused', maxRetries: 0 })
  const want = await expected('caption en', { maxNewTokens: 10, temperature: 0.8, seed: 3 })
  const whole = await client.completions.create({ model: modelId, prompt: 'caption en', image: dataUrl, max_tokens: 10, temperature: 0.8, seed: 3 })
  t.is(whole.object, 'text_completion')
  t.is(whole.choices[0].text, want.text)
  t.is(whole.usage.completion_tokens, want.tokenIds.length)
  const bare = await client.completions.create({ model: modelId, prompt: 'caption en', image: image.toString('base64'), max_tokens: 10, temperature: 0.8, seed: 3 })
  t.is(bare.choices[0].text, want.text, 'bare base64 works too')
  let text = ''
  let finish
  let usage
  for await (const chunk of await client.completions.create({ model: modelId, prompt: 'caption en', image: dataUrl, max_tokens: 10, temperature: 0.8, seed: 3, stream: true, stream_options: { include_usage: true } })) {
    text += chunk.choices[0]?.text ?? ''
    finish = chunk.choices[0]?.finish_reason ?? finish
    usage = chunk.usage ?? usage
  }
  t.is(text, want.text)
  t.truthy(finish)
  t.is(usage.completion_tokens, want.tokenIds.length)
  const detect = await client.completions.create({ model: modelId, prompt: 'detect cat', image: dataUrl, max_tokens: 8 })
  t.true(Array.isArray(detect.choices[0].paligemma.detections))
  const missing = await t.throwsAsync(client.completions.create({ model: modelId, prompt: 'caption en', max_tokens: 4 }))
  t.is(missing.status, 400)
  t.is(missing.code, 'image_required')
  const twoPrompts = await t.throwsAsync(client.completions.create({ model: modelId, prompt: ['a', 'b'], image: dataUrl }))
  t.is(twoPrompts.status, 400)
})

test('OpenAI client: segment prompts on the chat route carry segmentations', async (t) => {
  const { withVae, plain } = await ready
  for (const { url } of [withVae, plain]) {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 })
    const reply = await client.chat.completions.create({ model: modelId, max_tokens: 12, messages: [{ role: 'user', content: [{ type: 'text', text: 'segment cat' }, { type: 'image_url', image_url: { url: dataUrl } }] }] })
    t.true(Array.isArray(reply.choices[0].message.paligemma?.segmentations))
  }
})

test('remote image URLs (OpenAI client): fetched with --allow-remote-images within size and time limits, refused without it', async (t) => {
  const { withVae, plain, imagesUrl } = await ready
  const chat = (url, server) =>
    new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 }).chat.completions.create({
      model: modelId,
      max_tokens: 6,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'caption en' }, { type: 'image_url', image_url: { url } }] }],
    })
  const want = await expected('caption en', { maxNewTokens: 6 })
  for (const path of ['/cat.png', '/redirect']) {
    const ok = await chat(`${imagesUrl}${path}`, withVae)
    t.is(ok.choices[0].message.content, want.text, path)
  }
  const cases = [
    ['/missing', 400, 'image_fetch_failed', /HTTP 404/],
    ['/slow', 400, 'image_fetch_timeout', /within 400 ms/],
    ['/huge', 413, 'image_too_large', /200000-byte limit/],
  ]
  for (const [path, status, code, message] of cases) {
    const error = await t.throwsAsync(chat(`${imagesUrl}${path}`, withVae))
    t.is(error.status, status, path)
    t.is(error.code, code, path)
    t.regex(error.message, message)
  }
  const unreachable = await t.throwsAsync(chat('http://127.0.0.1:1/cat.png', withVae))
  t.is(unreachable.status, 400)
  t.is(unreachable.code, 'image_fetch_failed')
  const refused = await t.throwsAsync(chat(`${imagesUrl}/cat.png`, plain))
  t.is(refused.status, 400)
  t.is(refused.code, 'remote_image_refused')
  t.regex(refused.message, /--allow-remote-images/)
  const detect = await post(withVae.url, '/v1/detect', { image: `${imagesUrl}/cat.png`, labels: 'cat', max_tokens: 6 })
  t.is(detect.status, 200, '/v1/detect takes a remote URL too')
})
