// The scripts in examples/, run as child processes on the tiny fixture model (with the tiny
// tokenizer), bounded in time. server.mjs is started on 127.0.0.1 with port 0 and driven by fetch.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { longContextFixture, repo } from './helpers/fixtures.mjs'
import { runNode } from './helpers/run-cli.mjs'

const image = join(repo, 'testdata', 'e2e-caption', 'image.png')
const example = (name) => join(repo, 'examples', name)

/** The tiny model with its tokenizer, and a context long enough for a generation to outlive a client. */
const tinyModel = () => longContextFixture('pg1-tiny-a')

test('caption.mjs prints a caption', async (t) => {
  const { code, stdout, stderr } = await runNode([example('caption.mjs'), tinyModel(), image])
  t.is(code, 0, stderr)
  t.true(stdout.trim().length > 0)
  t.regex(stderr, /\(\d+ ms\)/)
})

test('stream-abort.mjs stops a stream with an AbortSignal and with break', async (t) => {
  const { code, stdout, stderr } = await runNode([example('stream-abort.mjs'), tinyModel(), image, '4'])
  t.is(code, 0, stderr)
  t.regex(stdout, /\[aborted: stopped after 4 tokens; 4 tokens streamed\]/)
  t.regex(stdout, /\[break: finishReason=abort, \d+ tokens\]/)
})

test('detect.mjs prints detections and writes the rendered PNG', async (t) => {
  const out = join(tmpdir(), `paligemma-detect-${process.pid}.png`)
  const { code, stdout, stderr } = await runNode([example('detect.mjs'), tinyModel(), image, 'cat ; dog', out])
  t.is(code, 0, stderr)
  t.regex(stdout, new RegExp(`wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
  t.deepEqual([...readFileSync(out).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
})

/** Reads server-sent events from a fetch response: `{ event, data }` objects, as they arrive. */
async function* events(response) {
  const decoder = new TextDecoder()
  let buffer = ''
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const event = /^event: (.*)$/m.exec(block)?.[1]
      const data = /^data: (.*)$/m.exec(block)?.[1]
      if (event) yield { event, data: JSON.parse(data) }
    }
  }
}

test('server.mjs streams tokens as server-sent events and aborts when the client disconnects', async (t) => {
  const child = spawn(process.execPath, [example('server.mjs'), tinyModel(), '0'], {
    cwd: repo,
    env: { ...process.env, PALIGEMMA_NO_CUDA: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const killer = setTimeout(() => child.kill('SIGKILL'), 90_000)
  let stdout = ''
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const waitFor = (pattern, ms = 30_000) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; stdout: ${stdout}; stderr: ${stderr}`)), ms)
      const check = () => {
        const match = pattern.exec(stdout)
        if (match) {
          clearTimeout(timer)
          child.stdout.off('data', onData)
          resolve(match)
        }
      }
      const onData = (d) => {
        stdout += d
        check()
      }
      child.stdout.on('data', onData)
      check()
    })
  try {
    const [, url] = await waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/)
    const body = readFileSync(image)

    // A complete request: token events, then done with the whole text.
    const response = await fetch(`${url}/generate?prompt=caption%20en&max_new_tokens=6`, { method: 'POST', body, signal: AbortSignal.timeout(30_000) })
    t.is(response.status, 200)
    t.is(response.headers.get('content-type'), 'text/event-stream')
    const received = []
    for await (const e of events(response)) received.push(e)
    const tokens = received.filter((e) => e.event === 'token')
    const done = received.filter((e) => e.event === 'done')
    t.is(done.length, 1)
    t.is(received.at(-1).event, 'done')
    t.true(tokens.length >= 1 && tokens.length <= 6)
    t.deepEqual(tokens.map((e) => e.data.index), [...tokens.keys()])
    t.is(done[0].data.timings.generatedTokens, tokens.length)
    t.true(done[0].data.text.startsWith(tokens.map((e) => e.data.text).join('')))

    // A long request whose client disconnects after the first token: the server aborts it.
    const controller = new AbortController()
    const long = await fetch(`${url}/generate?max_new_tokens=8000`, { method: 'POST', body, signal: controller.signal })
    for await (const e of events(long)) {
      t.is(e.event, 'token')
      break
    }
    controller.abort()
    await waitFor(/request 2: aborted by the client/)

    // The model is free again: a new request completes.
    const again = await fetch(`${url}/generate?max_new_tokens=2`, { method: 'POST', body, signal: AbortSignal.timeout(30_000) })
    const last = []
    for await (const e of events(again)) last.push(e.event)
    t.is(last.at(-1), 'done')

    // Bad input becomes an error event.
    const bad = await fetch(`${url}/generate`, { method: 'POST', body: Buffer.from('not an image'), signal: AbortSignal.timeout(30_000) })
    const errors = []
    for await (const e of events(bad)) errors.push(e)
    t.is(errors.length, 1)
    t.is(errors[0].event, 'error')
    t.is(errors[0].data.code, 'ERR_INVALID_IMAGE')
  } finally {
    clearTimeout(killer)
    child.kill('SIGTERM')
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on('close', resolve)))
  }
})
