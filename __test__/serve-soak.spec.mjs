// `paligemma serve` under 10 000 requests, a third of them hostile (issue 21): every one gets
// the right status, and RSS stays flat.
import test from 'ava'

import { PaliGemma, serve } from '../dist/index.js'
import { fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { MB, settledRss } from './helpers/memory.mjs'
import { noisyPng } from './helpers/png.mjs'

const image = noisyPng(24)
const b64 = image.toString('base64')

/** Request i of the soak: its body (or raw text), content type and the status it must get. */
function request(i) {
  const chat = (content, extra = {}) => JSON.stringify({ model: 'soak', messages: [{ role: 'user', content }], max_tokens: 2, ...extra })
  const withImage = (url) => [{ type: 'text', text: 'caption en' }, { type: 'image_url', image_url: { url } }]
  switch (i % 9) {
    case 0:
      return { path: '/v1/chat/completions', body: '{"model": "soak", "messages": [', status: 400 }
    case 1:
      return { path: '/v1/chat/completions', body: chat(withImage('data:image/png;base64,@@@@')), status: 400 }
    case 2:
      return { path: '/v1/chat/completions', body: chat('caption en'), status: 400 }
    case 3:
      return { path: '/v1/chat/completions', body: chat(withImage(`data:image/png;base64,${Buffer.from('garbage').toString('base64')}`)), status: 400 }
    case 4:
      return { path: '/v1/chat/completions', body: 'x'.repeat(300_000), type: 'application/json', status: 413 }
    case 5:
      return { path: '/api/generate', body: JSON.stringify({ model: 'soak', prompt: 'caption en', images: [b64], stream: false, options: { num_predict: 2 } }), status: 200 }
    case 6:
      return { path: '/v1/chat/completions', body: chat(withImage(`data:image/png;base64,${b64}`), { stream: true }), status: 200 }
    default:
      return { path: '/v1/chat/completions', body: chat(withImage(`data:image/png;base64,${b64}`)), status: 200 }
  }
}

test('10 000 requests, a third hostile: the right status for each, and RSS stays flat', async (t) => {
  const model = await PaliGemma.load(fixtureWithTokenizer('pg1-tiny-a'))
  const running = await serve(model, { modelId: 'soak', port: 0, maxBodyBytes: 200_000 })
  try {
    const send = async (i) => {
      const r = request(i)
      const res = await fetch(`${running.url}${r.path}`, { method: 'POST', headers: { 'content-type': r.type ?? 'application/json' }, body: r.body })
      await res.arrayBuffer()
      if (res.status !== r.status) throw new Error(`request ${i} (kind ${i % 9}): status ${res.status}, expected ${r.status}`)
    }
    const batch = async (from, to) => {
      for (let i = from; i < to; i += 16) await Promise.all(Array.from({ length: Math.min(16, to - i) }, (_, j) => send(i + j)))
    }
    await batch(0, 1000)
    const before = await settledRss()
    const started = performance.now()
    await batch(1000, 10_000)
    const after = await settledRss()
    t.log(`9000 requests in ${((performance.now() - started) / 1000).toFixed(1)} s; RSS ${(before / MB).toFixed(1)} → ${(after / MB).toFixed(1)} MB`)
    t.true(after - before < 40 * MB, `RSS grew by ${((after - before) / MB).toFixed(1)} MB`)
  } finally {
    await running.close(0)
    await model.dispose()
  }
})
