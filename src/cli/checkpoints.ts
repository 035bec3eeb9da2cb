/**
 * The commands on checkpoints and on the checkout rather than on images: `info`, `convert`,
 * `convert-vae` and `bench`.
 *
 * @internal
 */

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { downloadModel, isHubModelId } from '../hub.js'
import { convertCheckpoint, convertVae, inspectModel, prepareModel } from '../tools.js'
import type { ModelSummary } from '../tools.js'
import { CliError, UsageError, choice, err, flag, numberOption, out, str } from './args.js'
import type { Parsed } from './args.js'
import { formatBytes, formatCount } from './progress.js'
import { interrupt, modelDir } from './loading.js'

export async function runInfo(args: Parsed): Promise<number> {
  const { values, positionals } = args
  if (positionals.length > 1) throw new UsageError(`info takes one model, got ${positionals.length}`)
  const model = str(values, 'model') ?? positionals[0] ?? process.env.PALIGEMMA_MODEL
  if (!model) throw new UsageError('missing the model: paligemma info <dir|hub id>')
  let dir: string
  if (!existsSync(model) && isHubModelId(model)) {
    const revision = str(values, 'revision')
    dir = await downloadModel(model, { configOnly: true, signal: interrupt.signal, ...(revision === undefined ? {} : { revision }) })
  } else {
    dir = await modelDir({ ...values, model })
  }
  const summary = await inspectModel(dir)
  if (flag(values, 'json')) {
    out.write(`${JSON.stringify({ model, dir, ...summary }, null, 2)}\n`)
  } else {
    out.write(formatSummary(model, dir, summary))
  }
  return 0
}

function formatSummary(model: string, dir: string, s: ModelSummary): string {
  const decoder = s.architecture === 'paligemma2' ? 'Gemma 2' : 'Gemma'
  const t = s.text
  const v = s.vision
  const sliding = t.slidingWindow !== undefined ? `, sliding window ${t.slidingWindow} on ${t.slidingLayers} of ${t.layers} layers` : ''
  const f = s.files
  const weights =
    f.weights.length === 0
      ? 'not downloaded / not present'
      : `${f.weights.length} file${f.weights.length === 1 ? '' : 's'}, ${formatBytes(f.bytes)} on disk${f.dtype ? `, stored as ${f.dtype}` : ''}`
  const rows: [string, string][] = [
    ['model', model === dir ? dir : `${model} (${dir})`],
    ['architecture', `${s.architecture} (SigLIP vision tower + ${decoder} decoder)`],
    ['image', `${s.imageSize}×${s.imageSize} px, patch ${s.patchSize}, ${s.imageTokens} image tokens`],
    ['vision', `${v.layers} layers, hidden ${v.hiddenSize}, MLP ${v.intermediateSize}, ${v.heads} heads`],
    [
      'decoder',
      `${t.layers} layers, hidden ${t.hiddenSize}, MLP ${t.intermediateSize}, ${t.heads} heads / ${t.kvHeads} KV heads, head dim ${t.headDim}${sliding}`,
    ],
    ['vocabulary', `${t.vocabSize} tokens (image token ${s.imageTokenId}, bos ${s.bosTokenId}, eos ${s.eosTokenIds.join(', ')})`],
    ['context', `${t.contextLength} positions`],
    [
      'parameters',
      `${formatCount(s.parameterCount)} (${s.parameterCount}): vision ${formatCount(v.parameters)}, projector ${formatCount(s.projectorParameters)}, ` +
        `decoder ${formatCount(t.parameters)} incl. embedding ${formatCount(t.embeddingParameters)}; ${s.tensorCount} tensors`,
    ],
    ['weights', weights],
    ['tokenizer', f.hasTokenizer ? 'tokenizer.json' : 'missing (token ids only: no text prompts or text output)'],
    [
      'memory',
      `weights ${formatBytes(s.weightBytes.f32)} as f32, ${formatBytes(s.weightBytes.bf16)} as bf16/f16; ` +
        `KV cache ${formatBytes(s.kvCacheBytesPerToken.f32)} (f32) / ${formatBytes(s.kvCacheBytesPerToken.bf16)} (bf16) per token`,
    ],
  ]
  const width = Math.max(...rows.map(([k]) => k.length)) + 2
  return rows.map(([k, value]) => `${k.padEnd(width)}${value}`).join('\n') + '\n'
}

export async function runConvert(args: Parsed): Promise<number> {
  const { values, positionals } = args
  if (positionals.length !== 2) throw new UsageError('convert takes <checkpoint.npz> <out-dir>')
  const [npz = '', outDir = ''] = positionals
  const dtype = choice(values, 'dtype', ['f32', 'bf16', 'f16'] as const)
  const shardSize = numberOption(values, 'shard-size', true)
  const config = str(values, 'config')
  const tokenizer = str(values, 'tokenizer')
  if (!existsSync(npz)) throw new CliError('ERR_MODEL_LOAD', `no such checkpoint: ${npz}`)
  const report = await convertCheckpoint(npz, outDir, {
    ...(config === undefined ? {} : { config }),
    ...(tokenizer === undefined ? {} : { tokenizer }),
    ...(dtype === undefined ? {} : { dtype }),
    ...(shardSize === undefined ? {} : { shardBytes: shardSize }),
  })
  if (flag(values, 'json')) {
    out.write(`${JSON.stringify(report)}\n`)
  } else {
    out.write(`wrote ${outDir}: ${report.summary}\n`)
    for (const warning of report.warnings) err.write(`warning: ${warning}\n`)
    if (report.configInferred) err.write('note: config.json was inferred from the array shapes; pass --config to use the official one\n')
    if (report.tokenizerFiles.length === 0) err.write('note: no tokenizer copied (--tokenizer tokenizer.json); text prompts need one\n')
  }
  return 0
}

export async function runConvertVae(args: Parsed): Promise<number> {
  const { values, positionals } = args
  if (positionals.length !== 2) throw new UsageError('convert-vae takes <vae-oid.npz> <out.safetensors>')
  const [npz = '', target = ''] = positionals
  if (!existsSync(npz)) throw new CliError('ERR_MODEL_LOAD', `no such checkpoint: ${npz}`)
  const report = await convertVae(npz, target)
  if (flag(values, 'json')) {
    out.write(`${JSON.stringify(report)}\n`)
  } else {
    out.write(`wrote ${report.path}: ${report.tensors} tensors, ${formatBytes(report.bytes)}, codebook ${report.codebook.join('×')}\n`)
  }
  return 0
}

/** `paligemma quantize <model-dir> <out-dir>`: writes a prepared folder (docs/prepared.md). */
export async function runQuantize(args: Parsed): Promise<number> {
  const { values, positionals } = args
  if (positionals.length !== 2) throw new UsageError('quantize takes <model-dir> <out-dir>')
  const [modelDir = '', outDir = ''] = positionals
  const dtype = choice(values, 'dtype', ['f32', 'q8_0', 'q4k'] as const)
  if (!existsSync(modelDir)) throw new CliError('ERR_MODEL_LOAD', `no such model folder: ${modelDir}`)
  const report = await prepareModel(modelDir, outDir, dtype === undefined ? {} : { dtype })
  if (flag(values, 'json')) {
    out.write(`${JSON.stringify(report)}\n`)
  } else {
    out.write(`wrote ${outDir}: ${report.tensors} tensors, ${formatBytes(report.bytes)}, and ${report.filesCopied.join(', ')}\n`)
  }
  return 0
}

/** `benches/run.mjs` of a repository checkout, if this package runs from one. */
function benchHarness(): string | undefined {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
  const harness = join(root, 'benches', 'run.mjs')
  return existsSync(harness) ? harness : undefined
}

/** `paligemma bench`: runs the checkout's benchmark harness with the remaining arguments. */
export async function runBench(rest: string[]): Promise<number> {
  const harness = benchHarness()
  if (!harness) {
    throw new CliError(
      'ERR_NOT_AVAILABLE',
      'bench runs the benchmark harness of a repository checkout (benches/run.mjs, with its Python and Rust peers), ' +
        'which the npm package does not ship. Clone the repository, then run `npm install && npm run build && npm run bench`.',
    )
  }
  return await new Promise<number>((done, fail) => {
    const child = spawn(process.execPath, [harness, ...rest], { stdio: 'inherit', cwd: resolve(dirname(harness), '..') })
    child.on('error', fail)
    child.on('exit', (code, signal) => done(code ?? (signal ? 128 + 2 : 1)))
  })
}
