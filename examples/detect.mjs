#!/usr/bin/env node
// Detects objects and writes the image with the boxes drawn.
//
//   node examples/detect.mjs [model] [image] [labels] [out.png]
//
// labels: separated by ';' (default 'cat ; dog'); out: default detections.png in the temp folder.
// Defaults otherwise as in caption.mjs. With the tiny random test model the boxes (if any) are
// meaningless; the picture is still written.
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { PaliGemma, drawDetections } from 'paligemma'

const repo = fileURLToPath(new URL('..', import.meta.url))
const modelDir = process.argv[2] ?? process.env.PALIGEMMA_MODEL ?? `${repo}testdata/e2e-caption`
const image = process.argv[3] ?? `${repo}testdata/e2e-caption/image.png`
const labels = (process.argv[4] ?? 'cat ; dog').split(';').map((l) => l.trim())
const out = process.argv[5] ?? join(tmpdir(), 'detections.png')

const model = await PaliGemma.load(modelDir)
try {
  const detections = await model.detect(image, labels, { maxNewTokens: 64 })
  for (const { label, box } of detections) {
    console.log(`${label}: x=${box.x.toFixed(0)} y=${box.y.toFixed(0)} ${box.width.toFixed(0)}×${box.height.toFixed(0)}`)
  }
  if (detections.length === 0) console.log(`no ${labels.join(' or ')} found`)
  await writeFile(out, await drawDetections(image, detections))
  console.log(`wrote ${out}`)
} finally {
  await model.dispose()
}
