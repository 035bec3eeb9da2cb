// The hostile inputs of issue 19, one function per case, run in a child process each by
// helpers/isolated.mjs. Each case warms the addon up first and reports `beforeMB`, its RSS
// just before the hostile call, so the test can bound the growth of the peak RSS.
import { PaliGemma, preprocessImage } from '../../dist/index.js'
import { f, good } from './hostile.mjs'
import { onePixelPng } from './png.mjs'

const MiB = 2 ** 20

/** RSS after a GC, once the addon is loaded and has run once. */
async function warmBaseline(model) {
  await preprocessImage(onePixelPng(), 16)
  if (model) await model.generate(good)
  globalThis.gc?.()
  return process.memoryUsage().rss / MiB
}

/** `{ code, message, ms }` of a promise expected to reject. */
async function failure(promise) {
  const started = performance.now()
  try {
    await promise
    return { code: 'resolved', message: '', ms: performance.now() - started }
  } catch (error) {
    return { code: error?.code ?? String(error), message: String(error?.message ?? error), ms: performance.now() - started }
  }
}

/** Whether the model still gives the fixture's greedy ids. */
async function stillServes(model) {
  const result = await model.generate(good)
  return Array.from(result.tokenIds).join(',') === Array.from(f.generatedIds).join(',')
}

export const cases = {
  /** A raw 1 × 10⁸ grey image, resized to 224² (it aborted allocating 67 GB). */
  async tallRaw() {
    const beforeMB = await warmBaseline()
    const out = await preprocessImage({ data: new Uint8Array(1e8).fill(90), width: 1, height: 1e8, channels: 1 }, 224)
    const values = new Set(out.pixelValues)
    return { beforeMB, length: out.pixelValues.length, width: out.width, height: out.height, distinct: values.size, value: out.pixelValues[0] }
  },

  /** An encoded image file or buffer through `preprocessImage` at `size`. */
  async preprocessFile({ path, size }) {
    const beforeMB = await warmBaseline()
    const out = await preprocessImage(path, size)
    return { beforeMB, length: out.pixelValues.length, width: out.width, height: out.height, first: out.pixelValues[0] }
  },

  /** An `{ image, prompt }` generation with an encoded image file, then a good request. */
  async generateFromFile({ dir, path }) {
    const model = await PaliGemma.load(dir)
    const beforeMB = await warmBaseline(model)
    const result = await model.generate({ image: path, prompt: 'caption en', maxNewTokens: 4 })
    const serves = await stillServes(model)
    await model.dispose()
    return { beforeMB, image: result.image, tokens: result.tokenIds.length, serves }
  },

  /** A FIFO as an image path: generate, stream and preprocessImage, then the model still serves. */
  async fifoImage({ dir, fifo }) {
    const model = await PaliGemma.load(dir)
    const beforeMB = await warmBaseline(model)
    const generate = await failure(model.generate({ image: fifo, prompt: 'caption en', maxNewTokens: 4 }))
    const preprocess = await failure(preprocessImage(fifo, 224))
    const serves = await stillServes(model)
    await model.dispose()
    return { beforeMB, generate, preprocess, serves }
  },

  /** Loads each folder; every one must fail. Then a good folder still loads and serves. */
  async loadFolders({ dirs, goodDir }) {
    const beforeMB = await warmBaseline()
    const results = []
    for (const dir of dirs) {
      const controller = new AbortController()
      results.push(await failure(PaliGemma.load(dir, { signal: controller.signal })))
    }
    const model = await PaliGemma.load(goodDir)
    const serves = await stillServes(model)
    await model.dispose()
    return { beforeMB, results, serves }
  },

  /** Prompts far too long for the context, refused before tokenizing; then the model serves. */
  async longPrompts({ dir, prompts }) {
    const model = await PaliGemma.load(dir)
    const beforeMB = await warmBaseline(model)
    const results = []
    for (const { char, count } of prompts) {
      const prompt = char.repeat(count)
      results.push(await failure(model.generate({ image: onePixelPng(), prompt, maxNewTokens: 1 })))
    }
    const serves = await stillServes(model)
    await model.dispose()
    return { beforeMB, results, serves }
  },
}
