#!/usr/bin/env node
// Streams a caption token by token, and shows the two ways to stop a generation early:
// an AbortSignal (here: after `limit` tokens, or a deadline) and leaving the loop with `break`.
//
//   node examples/stream-abort.mjs [model] [image] [limit]
//
// Defaults as in caption.mjs; limit: stop after this many tokens (default 5).
import { fileURLToPath } from 'node:url'

import { PaliGemma } from 'paligemma'

const repo = fileURLToPath(new URL('..', import.meta.url))
const modelDir = process.argv[2] ?? process.env.PALIGEMMA_MODEL ?? `${repo}testdata/e2e-caption`
const image = process.argv[3] ?? `${repo}testdata/e2e-caption/image.png`
const limit = Number(process.argv[4] ?? 5)

const model = await PaliGemma.load(modelDir)
try {
  // 1. AbortSignal: abort after `limit` tokens (AbortSignal.timeout(ms) works the same way).
  const controller = new AbortController()
  // maxNewTokens is generous on purpose. Tokens are produced on a worker thread while this loop
  // reads them; a tiny test model makes ~13 tokens per ms, and on a busy machine the loop can
  // fall behind by 1000 tokens. With fewer left, the model could finish its whole answer first.
  const maxNewTokens = 4000
  const stream = model.stream({ image, prompt: 'caption en', maxNewTokens, signal: controller.signal })
  let tokens = 0
  try {
    for await (const chunk of stream) {
      process.stdout.write(chunk.text)
      if (++tokens === limit) controller.abort(new Error(`stopped after ${limit} tokens`))
    }
    console.log('\n[finished before the limit]')
  } catch (error) {
    if (error.name !== 'AbortError') throw error
    console.log(`\n[aborted: ${error.cause?.message ?? error.message}; ${tokens} tokens streamed]`)
  }

  // 2. break: leaving the loop cancels the request; `result` then reports finishReason 'abort'.
  const second = model.stream({ image, prompt: 'caption en', maxNewTokens })
  for await (const chunk of second) {
    if (chunk.index + 1 >= limit) break
  }
  const result = await second.result
  console.log(`[break: finishReason=${result.finishReason}, ${result.tokenIds.length} tokens]`)
} finally {
  await model.dispose()
}
