#!/usr/bin/env node
// Captions an image.
//
//   node examples/caption.mjs [model] [image] [lang]
//
// model: a model folder or a Hugging Face hub id (default: $PALIGEMMA_MODEL, else the bundled tiny
// test model testdata/e2e-caption, whose random weights caption in gibberish; `npm run demo`
// builds its tokenizer once). image: default the bundled sample image.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { PaliGemma } from 'paligemma'

const repo = fileURLToPath(new URL('..', import.meta.url))
const modelDir = process.argv[2] ?? process.env.PALIGEMMA_MODEL ?? `${repo}testdata/e2e-caption`
const image = process.argv[3] ?? `${repo}testdata/e2e-caption/image.png`
const lang = process.argv[4] ?? 'en'

if (modelDir.endsWith('e2e-caption') && !existsSync(`${modelDir}/tokenizer.json`)) {
  console.error('The tiny test model has no tokenizer.json yet: run `npm run demo` once to build it.')
  process.exit(1)
}

const model = await PaliGemma.load(modelDir)
try {
  const started = performance.now()
  const caption = await model.caption(image, { lang, maxNewTokens: 32 })
  console.log(caption)
  console.error(`(${(performance.now() - started).toFixed(0)} ms)`)
} finally {
  await model.dispose()
}
