// Resident memory and first-request cost of one load, through the public API: RSS after load,
// then TTFT, decode speed and RSS for three identical requests in a row. A quantized model's RSS
// should not grow after load, nor its first TTFT stand out: candle's repack is made, and its
// original released, while the model loads (docs/guarantees.md). Where either happens, that
// repack ran on first use.
//
//   node benches/memory.mjs <model-dir> [f32|f16|q8_0|q4k] [threads]
//
// Needs `npm run build`. Real-size random weights: engine_bench random-checkpoint (benches/README.md).
import { PaliGemma } from '../dist/index.js'
import { pixels, promptIds } from './lib/common.mjs'

const [dir, dtype = 'f32', threads = '2'] = process.argv.slice(2)
if (!dir) {
  console.error('usage: node benches/memory.mjs <model-dir> [f32|f16|q8_0|q4k] [threads]')
  process.exit(2)
}
const rssGb = () => (process.memoryUsage().rss / 1e9).toFixed(2)
const started = performance.now()
const model = await PaliGemma.load(dir, { device: 'cpu', dtype, threads: Number(threads) })
console.log(`${dtype}: load ${((performance.now() - started) / 1000).toFixed(1)} s, RSS ${rssGb()} GB`)
// The harness's prompt and pixels.
const inputIds = promptIds(model.info)
const pixelValues = pixels(model.info.imageSize)
for (let i = 1; i <= 3; i++) {
  const { timings } = await model.generate({ inputIds, pixelValues, maxNewTokens: 8 })
  const decode = timings.decodeMs / Math.max(1, timings.decodeSteps)
  console.log(`request ${i}: TTFT ${timings.prefillMs.toFixed(0)} ms, decode ${decode.toFixed(0)} ms/token, RSS ${rssGb()} GB`)
}
await model.dispose()
