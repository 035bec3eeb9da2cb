// `paligemma serve` with the official OpenAI and Ollama clients (issue 21, first part): the
// server's text equals model.generate on the same input, streaming and not, and bad requests get
// the right status in each API's error shape.
import test from 'ava'
import { Ollama } from 'ollama'
import OpenAI from 'openai'

import { PaliGemma, serve } from '../dist/index.js'
import { fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { noisyPng } from './helpers/png.mjs'

const image = noisyPng(32)
const dataUrl = `data:image/png;base64,${image.toString('base64')}`
const modelId = 'tiny-paligemma'

const ready = (async () => {
  const model = await PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'))
  const running = await serve(model, { modelId, port: 0, apiKey: 'secret', maxBodyBytes: 1_000_000 })
  return { model, running }
})()

test.after.always(async () => {
  const { model, running } = await ready
  await running.close()
  await model.dispose()
})

const openai = async () => new OpenAI({ baseURL: `${(await ready).running.url}/v1`, apiKey: 'secret', maxRetries: 0 })
const ollama = async () => new Ollama({ host: (await ready).running.url, headers: { authorization: 'Bearer secret' } })
const userMessage = (text, url = dataUrl) => [{ role: 'user', content: [{ type: 'text', text }, { type: 'image_url', image_url: { url } }] }]
const expected = async (prompt, options = {}) => (await ready).model.generate({ image, prompt, ...options })

test('OpenAI client: models, a completion equal to model.generate, and usage', async (t) => {
  const client = await openai()
  const models = await client.models.list()
  t.deepEqual(models.data.map((m) => m.id), [modelId])
  const want = await expected('caption en', { maxNewTokens: 12, temperature: 0.7, seed: 5 })
  const got = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 12, temperature: 0.7, seed: 5 })
  t.is(got.choices[0].message.content, want.text)
  t.is(got.choices[0].finish_reason, want.finishReason === 'length' ? 'length' : 'stop')
  t.is(got.usage.completion_tokens, want.tokenIds.length)
  t.is(got.usage.prompt_tokens, want.timings.promptTokens)
})

test('OpenAI client: streaming deltas add up to the text, with the usage chunk', async (t) => {
  const client = await openai()
  const want = await expected('caption en', { maxNewTokens: 16 })
  const stream = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 16, stream: true, stream_options: { include_usage: true } })
  let text = ''
  let usage
  let finish
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? ''
    finish = chunk.choices[0]?.finish_reason ?? finish
    usage = chunk.usage ?? usage
  }
  t.is(text, want.text)
  t.truthy(finish)
  t.is(usage.completion_tokens, want.tokenIds.length)
})

test('OpenAI client: detect prompts carry the parsed boxes', async (t) => {
  const client = await openai()
  const got = await client.chat.completions.create({ model: modelId, messages: userMessage('detect cat'), max_tokens: 8 })
  t.true(Array.isArray(got.choices[0].message.paligemma?.detections))
})

test('OpenAI client: bad requests get 400/401/404 in OpenAI\'s error shape', async (t) => {
  const client = await openai()
  const cases = [
    [{ model: modelId, messages: [{ role: 'user', content: 'caption en' }] }, 400, /exactly one image/],
    [{ model: 'other', messages: userMessage('caption en') }, 404, /not served here/],
    [{ model: modelId, messages: userMessage('caption en', 'https://example.com/cat.png') }, 400, /remote image URLs/],
    [{ model: modelId, messages: userMessage('caption en', 'data:text/plain;base64,aGk=') }, 400, /data:image/],
    [{ model: modelId, messages: userMessage('caption en', 'data:image/png;base64,%%%') }, 400, /not valid base64/],
    [{ model: modelId, messages: userMessage('caption en', `data:image/png;base64,${Buffer.from('not an image').toString('base64')}`) }, 400, /image/],
    [{ model: modelId, messages: userMessage('caption en'), n: 2 }, 400, /n must be 1/],
    [{ model: modelId, messages: userMessage('caption en'), max_tokens: 0 }, 400, /maxNewTokens/],
  ]
  for (const [body, status, message] of cases) {
    const error = await t.throwsAsync(client.chat.completions.create(body))
    t.is(error.status, status, JSON.stringify(body).slice(0, 120))
    t.regex(error.message, message)
  }
  const wrongKey = new OpenAI({ baseURL: `${(await ready).running.url}/v1`, apiKey: 'nope', maxRetries: 0 })
  t.is((await t.throwsAsync(wrongKey.models.list())).status, 401)
})

test('raw HTTP: bad JSON, a wrong content type and an oversized body', async (t) => {
  const { url } = (await ready).running
  const post = (body, type = 'application/json') =>
    fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type, authorization: 'Bearer secret' }, body })
  const bad = await post('{not json')
  t.is(bad.status, 400)
  t.is((await bad.json()).error.code, 'invalid_json')
  t.is((await post('{}', 'text/plain')).status, 415)
  t.is((await post(JSON.stringify({ pad: 'x'.repeat(1_200_000) }))).status, 413)
  t.is((await fetch(`${url}/nope`, { headers: { authorization: 'Bearer secret' } })).status, 404)
  t.is((await fetch(`${url}/health`)).status, 200, '/health needs no key')
})

test('OpenAI client: aborting a stream mid-way leaves the server serving', async (t) => {
  const client = await openai()
  const controller = new AbortController()
  const stream = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 400, stream: true }, { signal: controller.signal })
  let chunks = 0
  try {
    // Depending on its version, the client ends the loop or throws APIUserAbortError, and may
    // still hand out chunks it had already read when the abort came.
    for await (const _ of stream) if (++chunks === 3) controller.abort()
  } catch (error) {
    t.true(error instanceof OpenAI.APIUserAbortError, String(error))
  }
  t.true(chunks < 100, `${chunks} chunks of up to 400: the stream stopped early`)
  // The server saw the connection close and dropped the request from the batch.
  let inFlight
  for (let i = 0; i < 200; i++) {
    const metrics = await (await fetch(`${(await ready).running.url}/metrics`, { headers: { authorization: 'Bearer secret' } })).text()
    inFlight = Number(/^paligemma_requests_in_flight (\d+)$/m.exec(metrics)?.[1])
    if (inFlight === 0) break
    await new Promise((r) => setTimeout(r, 10))
  }
  t.is(inFlight, 0)
  const want = await expected('caption en', { maxNewTokens: 6 })
  const got = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 6 })
  t.is(got.choices[0].message.content, want.text)
})

test('Ollama client: tags, version, generate and chat, streamed and not', async (t) => {
  const client = await ollama()
  t.deepEqual((await client.list()).models.map((m) => m.name), [modelId])
  t.truthy((await client.version()).version)
  const want = await expected('caption en', { maxNewTokens: 10 })
  const b64 = image.toString('base64')
  const whole = await client.generate({ model: modelId, prompt: 'caption en', images: [b64], stream: false, options: { num_predict: 10 } })
  t.is(whole.response, want.text)
  t.is(whole.eval_count, want.tokenIds.length)
  let streamed = ''
  for await (const part of await client.generate({ model: modelId, prompt: 'caption en', images: [b64], stream: true, options: { num_predict: 10 } })) streamed += part.response
  t.is(streamed, want.text)
  const chat = await client.chat({ model: modelId, messages: [{ role: 'user', content: 'caption en', images: [b64] }], stream: false, options: { num_predict: 10 } })
  t.is(chat.message.content, want.text)
  const error = await t.throwsAsync(client.generate({ model: modelId, prompt: 'caption en', images: [], stream: false }))
  t.regex(error.message, /exactly one image/)
})

test('paligemma serve prints its URL once loaded (with --prefill-share) and exits 0 on SIGTERM', async (t) => {
  const { spawn } = await import('node:child_process')
  const { join } = await import('node:path')
  const { repo } = await import('./helpers/fixtures.mjs')
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  // --prefill-share reaches the model's load options (a bad value is a usage error, exit 2).
  const cli = join(repo, 'dist', 'src', 'cli.js')
  const bad = spawn(process.execPath, [cli, 'serve', '--model', dir, '--port', '0', '--prefill-share=-1'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let badErr = ''
  bad.stderr.on('data', (d) => (badErr += d))
  t.is(await new Promise((resolve) => bad.once('exit', resolve)), 2)
  t.regex(badErr, /--prefill-share must be a number from 0 to 1000/)
  const child = spawn(process.execPath, [cli, 'serve', '--model', dir, '--port', '0', '--prefill-share', '1'], { stdio: ['ignore', 'pipe', 'pipe'] })
  const url = await new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 30_000)
    child.stdout.on('data', (d) => {
      out += d
      const match = /serving \S+ at (http:\/\/\S+)/.exec(out)
      if (match) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    child.once('exit', (code) => reject(new Error(`exited with ${code}: ${out}`)))
  })
  t.regex(url, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.is((await (await fetch(`${url}/health`)).json()).status, 'ok')
  const models = await (await fetch(`${url}/v1/models`)).json()
  t.is(models.data[0].id, dir.split('/').at(-1), 'a folder is named by its name')
  const exit = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  t.is(await exit, 0)
})

test('64 concurrent clients, a random third of them disconnecting, each staying one gets its own output', async (t) => {
  const client = await openai()
  const requests = Array.from({ length: 64 }, (_, i) => ({
    max_tokens: 4 + (i % 9),
    ...(i % 2 ? { temperature: 0.9, seed: 100 + i } : {}),
    leaves: i % 3 === 1,
  }))
  const wants = []
  for (const r of requests) {
    wants.push((await expected('caption en', { maxNewTokens: r.max_tokens, ...(r.seed === undefined ? {} : { temperature: r.temperature, seed: r.seed }) })).text)
  }
  const results = await Promise.all(
    requests.map(async ({ leaves, ...r }, i) => {
      const controller = new AbortController()
      if (leaves) setTimeout(() => controller.abort(), 1 + (i % 7))
      try {
        const reply = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), ...r }, { signal: controller.signal })
        return reply.choices[0].message.content
      } catch (error) {
        if (leaves && error instanceof OpenAI.APIUserAbortError) return null
        throw error
      }
    }),
  )
  results.forEach((text, i) => {
    if (text !== null) t.is(text, wants[i], `client ${i}`)
  })
  t.true(results.filter((r) => r !== null).length >= 43, 'every client that stayed got an answer')
  // And the server is whole afterwards.
  const after = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 4 })
  t.is(after.choices[0].message.content, wants[0])
})

test('past maxQueue, requests get 429 with Retry-After; CORS answers preflights; close() cancels what is left', async (t) => {
  const model = await PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'), { maxBatch: 1 })
  const running = await serve(model, { modelId, port: 0, maxQueue: 0, cors: 'https://app.example' })
  try {
    const post = () =>
      fetch(`${running.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: modelId, messages: userMessage('caption en'), max_tokens: 480 }),
      })
    const responses = await Promise.all([post(), post(), post()])
    const full = responses.filter((r) => r.status === 429)
    t.true(full.length >= 1, responses.map((r) => r.status).join(','))
    t.is(full[0].headers.get('retry-after'), '1')
    t.is((await full[0].json()).error.code, 'queue_full')
    const preflight = await fetch(`${running.url}/v1/chat/completions`, { method: 'OPTIONS' })
    t.is(preflight.status, 204)
    t.is(preflight.headers.get('access-control-allow-origin'), 'https://app.example')
    t.regex(preflight.headers.get('access-control-allow-headers'), /authorization/)
    // A long stream is still running when the server closes with a short grace period.
    const controller = new AbortController()
    const streaming = fetch(`${running.url}/api/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: modelId, prompt: 'caption en', images: [image.toString('base64')], options: { num_predict: 100000 } }),
      signal: controller.signal,
    }).then((r) => r.text().then(() => 'ended', () => 'cut'), () => 'cut')
    await new Promise((r) => setTimeout(r, 50))
    const started = performance.now()
    await running.close(200)
    t.true(performance.now() - started < 5000, 'close() did not wait for the generation to finish')
    t.truthy(await streaming)
  } finally {
    await running.close(0)
    await model.dispose()
  }
})

test('/metrics counts requests, tokens and generation timings in the Prometheus format', async (t) => {
  const client = await openai()
  const reply = await client.chat.completions.create({ model: modelId, messages: userMessage('caption en'), max_tokens: 5 })
  const res = await fetch(`${(await ready).running.url}/metrics`, { headers: { authorization: 'Bearer secret' } })
  t.is(res.status, 200)
  t.regex(res.headers.get('content-type'), /text\/plain/)
  const text = await res.text()
  const value = (pattern) => Number(new RegExp(`^${pattern} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN)
  t.true(value('paligemma_http_requests_total\\{route="POST /v1/chat/completions",status="200"\\}') >= 1)
  t.true(value('paligemma_tokens_total\\{direction="out"\\}') >= reply.usage.completion_tokens)
  t.true(value('paligemma_tokens_total\\{direction="in"\\}') >= reply.usage.prompt_tokens)
  t.true(value('paligemma_time_to_first_token_seconds_count') >= 1)
  t.true(value('paligemma_batch_size_count') >= 1)
  t.regex(text, /^paligemma_requests_in_flight \d+$/m)
})

test('POST /v1/detect returns boxes equal to model.detect, and refuses bad labels', async (t) => {
  const { model, running } = await ready
  const want = await model.detect(image, ['cat', 'dog'], { maxNewTokens: 12 })
  const post = (body) =>
    fetch(`${running.url}/v1/detect`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer secret' }, body: JSON.stringify(body) })
  const res = await post({ image: dataUrl, labels: ['cat', 'dog'], max_tokens: 12 })
  t.is(res.status, 200)
  const got = await res.json()
  t.deepEqual(got.detections, JSON.parse(JSON.stringify(want)))
  t.is(typeof got.text, 'string')
  const bare = await (await post({ image: image.toString('base64'), labels: 'cat ; dog', max_tokens: 12 })).json()
  t.deepEqual(bare.detections, got.detections, 'bare base64 and "a ; b" labels work too')
  for (const labels of [[], [''], ['a;b'], 3]) {
    const bad = await post({ image: dataUrl, labels })
    t.is(bad.status, 400)
    t.is((await bad.json()).error.param, 'labels')
  }
})

test('a streamed request queued behind a full batch gets its headers and keep-alives before its first token', async (t) => {
  const { longContextFixture } = await import('./helpers/fixtures.mjs')
  const model = await PaliGemma.load(longContextFixture('pg1-tiny-a'), { maxBatch: 1 })
  const running = await serve(model, { modelId, port: 0, openStreamAfterMs: 30 })
  try {
    const body = (maxTokens) => JSON.stringify({ model: modelId, stream: true, max_tokens: maxTokens, messages: userMessage('caption en') })
    const post = (maxTokens) => fetch(`${running.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(maxTokens) })
    const long = post(7000)
    await new Promise((r) => setTimeout(r, 20))
    const queued = await post(4)
    t.is(queued.status, 200)
    const text = await queued.text()
    t.regex(text, /^data: .*"role":"assistant"/, 'the stream opened with the role chunk')
    t.regex(text, /^: waiting for the batch$/m, 'keep-alives went out while it waited')
    t.is(text.match(/"role":"assistant"/g).length, 1, 'the role chunk is sent once')
    t.regex(text, /data: \[DONE\]\n\n$/)
    const first = await long
    await first.text()
  } finally {
    await running.close(0)
    await model.dispose()
  }
})
