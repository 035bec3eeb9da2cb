#!/usr/bin/env node
// `npm run bench:serve`: N concurrent HTTP clients against `paligemma serve`, next to the same
// N streams run in-process through the library, so that the HTTP overhead shows (issue 21).
//
//   npm run bench:serve -- [--levels 1,8,32] [--new-tokens 32] [--threads 2] [--model-dir DIR] [--json]
//
// The model is the real-size random PaliGemma-3B-224 of the CPU harness (benches/lib/setup.mjs)
// with PaliGemma's tokenizer beside it (built from Gemma's, scripts/make-paligemma-tokenizer.mjs).
// Every request is `caption en` on its own synthetic PNG, streamed. Per level and mode: aggregate
// decode tok/s (tokens while every stream decodes, per second), TTFT p50/p99 at the client.

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'

import { noisyPng } from '../__test__/helpers/png.mjs'
import { ROOT, log, round } from './lib/common.mjs'
import { checkpointWithTokenizer } from './lib/setup.mjs'

const { values: args } = parseArgs({
  options: {
    levels: { type: 'string', default: '1,8,32' },
    'new-tokens': { type: 'string', default: '32' },
    threads: { type: 'string', default: '2' },
    'model-dir': { type: 'string' },
    json: { type: 'boolean', default: false },
    child: { type: 'string' },
  },
})

const percentile = (values, p) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.max(0, Math.ceil((p / 100) * values.length) - 1))]

/** Aggregate decode tok/s over the window where every stream decodes, and TTFTs. */
function figures(streams) {
  const firsts = streams.map((s) => s.times[0])
  const lasts = streams.map((s) => s.times.at(-1))
  let [from, to] = [Math.max(...firsts), Math.min(...lasts)]
  let tokens = streams.reduce((n, s) => n + s.times.filter((x) => x > from && x <= to).length, 0)
  if (to <= from || tokens === 0) {
    ;[from, to] = [Math.min(...firsts), Math.max(...lasts)]
    tokens = streams.reduce((n, s) => n + s.times.length - 1, 0)
  }
  const ttft = streams.map((s) => s.times[0] - s.submitted)
  return { aggregate_tok_s: round((tokens * 1000) / (to - from), 3), ttft_p50_ms: round(percentile(ttft, 50), 0), ttft_p99_ms: round(percentile(ttft, 99), 0) }
}

const images = (n) => Array.from({ length: n }, (_, i) => noisyPng(64 + i))

/** One level through the library, in this (child) process. */
async function inProcess(dir, n, newTokens, threads) {
  const { PaliGemma } = await import('../dist/index.js')
  const model = await PaliGemma.load(dir, { device: 'cpu', threads })
  for await (const _ of model.stream({ image: images(1)[0], prompt: 'caption en', maxNewTokens: 2 })) void _
  const streams = await Promise.all(
    images(n).map(async (image) => {
      const submitted = performance.now()
      const times = []
      for await (const _ of model.stream({ image, prompt: 'caption en', maxNewTokens: newTokens })) times.push(performance.now())
      return { submitted, times }
    }),
  )
  await model.dispose()
  return figures(streams)
}

/** One level over HTTP: a `paligemma serve` child, clients streaming with fetch from here. */
async function overHttp(dir, n, newTokens, threads) {
  const server = spawn(process.execPath, [path.join(ROOT, 'dist', 'src', 'cli.js'), 'serve', '--model', dir, '--port', '0', '--device', 'cpu', '--threads', String(threads), '-q'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RAYON_NUM_THREADS: String(threads), CANDLE_NUM_THREADS: String(threads) },
  })
  const url = await new Promise((resolve, reject) => {
    let out = ''
    server.stdout.on('data', (d) => {
      out += d
      const m = /at (http:\/\/\S+)/.exec(out)
      if (m) resolve(m[1])
    })
    server.once('exit', (code) => reject(new Error(`serve exited with ${code}`)))
  })
  const body = (image, maxTokens) =>
    JSON.stringify({ model: path.basename(dir), stream: true, max_tokens: maxTokens, messages: [{ role: 'user', content: [{ type: 'text', text: 'caption en' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${image.toString('base64')}` } }] }] })
  const one = async (image, maxTokens) => {
    const submitted = performance.now()
    const times = []
    const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(image, maxTokens) })
    const decoder = new TextDecoder()
    let buffered = ''
    for await (const part of res.body) {
      buffered += decoder.decode(part, { stream: true })
      let cut
      while ((cut = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, cut)
        buffered = buffered.slice(cut + 2)
        if (event.includes('"content":"') && !event.includes('"content":""')) times.push(performance.now())
      }
    }
    return { submitted, times }
  }
  await one(images(1)[0], 2)
  const streams = await Promise.all(images(n).map((image) => one(image, newTokens)))
  const exited = new Promise((resolve) => server.once('exit', resolve))
  server.kill('SIGTERM')
  await exited
  return figures(streams)
}

async function main() {
  const threads = Number(args.threads)
  const newTokens = Number(args['new-tokens'])
  if (args.child) {
    const [dir, n] = JSON.parse(args.child)
    console.log(JSON.stringify(await inProcess(dir, n, newTokens, threads)))
    return
  }
  const dir = args['model-dir'] ? path.resolve(args['model-dir']) : await checkpointWithTokenizer()
  const rows = []
  for (const n of args.levels.split(',').map(Number)) {
    log(`${n} streams in-process`)
    const local = await new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [process.argv[1], '--child', JSON.stringify([dir, n]), '--threads', String(threads), '--new-tokens', String(newTokens)], {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, RAYON_NUM_THREADS: String(threads), CANDLE_NUM_THREADS: String(threads) },
      })
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1))) : reject(new Error(`child exited ${code}`))))
    })
    log(`${n} clients over HTTP`)
    const http = await overHttp(dir, n, newTokens, threads)
    rows.push({ streams: n, in_process: local, http, http_over_in_process: round(http.aggregate_tok_s / local.aggregate_tok_s, 3) })
    log(JSON.stringify(rows.at(-1)))
  }
  console.log('| streams | in-process tok/s | HTTP tok/s | HTTP ÷ in-process | TTFT p50 / p99 s in-process | TTFT p50 / p99 s HTTP |')
  console.log('|---:|---:|---:|---:|---:|---:|')
  for (const r of rows) {
    const s = (x) => (x / 1000).toFixed(1)
    console.log(`| ${r.streams} | ${r.in_process.aggregate_tok_s} | ${r.http.aggregate_tok_s} | ${r.http_over_in_process} | ${s(r.in_process.ttft_p50_ms)} / ${s(r.in_process.ttft_p99_ms)} | ${s(r.http.ttft_p50_ms)} / ${s(r.http.ttft_p99_ms)} |`)
  }
  if (args.json) console.log(JSON.stringify({ model: path.basename(dir), new_tokens: newTokens, threads, levels: rows }))
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
