#!/usr/bin/env node
// A minimal HTTP endpoint that streams generated tokens as server-sent events.
//
//   node examples/server.mjs [model] [port]        (default port 8080; 0 picks a free one)
//
//   curl -N --data-binary @cat.jpg 'http://127.0.0.1:8080/generate?prompt=caption%20en'
//
// POST /generate?prompt=...&max_new_tokens=... with the image as the request body. Events:
//   event: token   data: {"index":0,"tokenId":123,"text":"A"}
//   event: done    data: {"text":"...","finishReason":"eos","timings":{...}}
//   event: error   data: {"code":"ERR_INVALID_IMAGE","message":"..."}
// When the client disconnects, the request is aborted (the model stops before its next token)
// and the next queued request runs. One model serves every connection: requests queue in order.
import { createServer } from 'node:http'
import { fileURLToPath } from 'node:url'

import { PaliGemma } from 'paligemma'

const repo = fileURLToPath(new URL('..', import.meta.url))
const modelDir = process.argv[2] ?? process.env.PALIGEMMA_MODEL ?? `${repo}testdata/e2e-caption`
const port = Number(process.argv[3] ?? process.env.PORT ?? 8080)
const MAX_IMAGE_BYTES = 20 << 20

const model = await PaliGemma.load(modelDir)
let nextId = 1

async function readBody(req) {
  const chunks = []
  let size = 0
  for await (const chunk of req) {
    size += chunk.length
    if (size > MAX_IMAGE_BYTES) throw Object.assign(new Error('image too large'), { status: 413 })
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost')
  if (req.method !== 'POST' || url.pathname !== '/generate') {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('POST /generate?prompt=...\n')
    return
  }
  const id = nextId++
  let image
  try {
    image = await readBody(req)
  } catch (error) {
    res.writeHead(error.status ?? 400, { 'content-type': 'text/plain' }).end(`${error.message}\n`)
    return
  }
  const controller = new AbortController()
  // The client went away before the response ended: stop generating for it.
  res.on('close', () => {
    if (!res.writableFinished) {
      controller.abort()
      console.log(`request ${id}: aborted by the client`)
    }
  })
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
  const send = (event, data) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
  try {
    const stream = model.stream({
      image,
      prompt: url.searchParams.get('prompt') ?? 'caption en',
      maxNewTokens: Number(url.searchParams.get('max_new_tokens') ?? 64),
      signal: controller.signal,
    })
    for await (const { index, tokenId, text } of stream) send('token', { index, tokenId, text })
    const { text, finishReason, timings } = await stream.result
    send('done', { text, finishReason, timings })
    console.log(`request ${id}: ${finishReason}, ${timings.generatedTokens} tokens`)
  } catch (error) {
    if (error.name === 'AbortError') return
    send('error', { code: error.code ?? 'ERR_INTERNAL', message: error.message })
  }
  res.end()
})

async function shutdown() {
  server.close()
  await model.dispose()
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})
