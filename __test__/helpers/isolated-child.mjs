// Child side of helpers/isolated.mjs: runs one case and prints its result as the last line.
import { cases } from './hostile-cases.mjs'

const [name, rawArgs] = process.argv.slice(2)
const run = cases[name]
if (!run) throw new Error(`no case ${name}`)
globalThis.gc?.()
const baselineMB = process.memoryUsage().rss / 2 ** 20
const started = performance.now()
const result = await run(JSON.parse(rawArgs ?? '{}'))
const ms = performance.now() - started
// maxRSS is in KiB on Linux.
const peakMB = process.resourceUsage().maxRSS / 1024
process.stdout.write(`\n${JSON.stringify({ ...result, baselineMB, peakMB, ms })}\n`)
