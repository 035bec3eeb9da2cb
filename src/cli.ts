#!/usr/bin/env node
/**
 * The `paligemma` command line: captions, questions, OCR, detection and segmentation on an
 * image, raw prompts, model inspection and checkpoint conversion. See `paligemma --help` and
 * docs/cli.md.
 *
 * Exit status: 0 on success, 2 on a usage error (unknown command or option, missing or
 * malformed argument, a command this version does not have), 1 on any other failure, 130 when
 * interrupted. Errors are printed as `paligemma: <CODE>: <message>`.
 *
 * @packageDocumentation
 * @internal
 */

import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { ParseArgsConfig } from 'node:util'

import { AbortError, PaliGemmaError } from './errors.js'
import { downloadModel, isHubModelId, resolveModel } from './hub.js'
import type { DownloadProgress } from './hub.js'
import { PaliGemma } from './model.js'
import { drawDetections, drawMasks } from './render.js'
import { convertCheckpoint, convertVae, inspectModel } from './tools.js'
import type { ModelSummary } from './tools.js'
import type { DType, DeviceKind, Detection, GenerateResult, LoadProgress, SamplingOptions, Segmentation } from './types.js'

// ---------------------------------------------------------------------------------------------
// Errors and output

/** A mistake in the command line: exit status 2. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message)
  }
}

/** A failure with an error code that is not a {@link PaliGemmaError}. */
class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode = 1,
  ) {
    super(message)
  }
}

const out = process.stdout
const err = process.stderr

// ---------------------------------------------------------------------------------------------
// Options

type OptionSpec = NonNullable<ParseArgsConfig['options']>

const MODEL_OPTIONS: OptionSpec = {
  model: { type: 'string', short: 'm' },
  revision: { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
  threads: { type: 'string' },
}

const SAMPLING_OPTIONS: OptionSpec = {
  'max-new-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string', short: 't' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
}

const OUTPUT_OPTIONS: OptionSpec = {
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  verbose: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
}

const IMAGE_OPTION: OptionSpec = { image: { type: 'string', short: 'i' } }

interface Command {
  /** One line for the command list. */
  summary: string
  /** The usage line(s) after `paligemma `. */
  usage: string
  /** Extra help text. */
  details?: string
  options: OptionSpec
  /** Whether positionals are accepted. */
  positionals: boolean
  run(args: Parsed): Promise<number>
}

interface Parsed {
  command: string
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

/** Precisions of the model commands: float formats, and the CPU decoder quantized on load. */
const MODEL_DTYPES: DType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4k']

const MODEL_HELP = `Model options:
  -m, --model <dir|id>        a model folder, or a Hugging Face hub id (e.g. google/paligemma2-3b-mix-224),
                              downloaded into the Hugging Face cache (HF_HOME, HF_HUB_CACHE; HF_TOKEN for
                              gated models). Default: $PALIGEMMA_MODEL
      --revision <rev>        hub branch, tag or commit (default main)
      --device <auto|cpu|cuda>
      --dtype <f32|f16|bf16|q8_0|q4k>
                              compute precision (default f32 on the CPU, bf16 on a GPU); q8_0 and q4k
                              quantize the text decoder as the model loads (CPU only, about 4x and 5x
                              faster decoding than f32)
      --threads <n>           CPU threads (default: all)
  -i, --image <path>          the image (JPEG, PNG, WebP, GIF, BMP); - reads it from stdin`

const SAMPLING_HELP = `Sampling options:
  -n, --max-new-tokens <n>    most tokens to generate
  -t, --temperature <x>       0 (default) is greedy
      --top-k <n>, --top-p <x>, --repetition-penalty <x>
      --seed <n>              sampler seed (same seed, same output)`

const OUTPUT_HELP = `Output options:
      --json                  print one JSON object instead of text; no progress bars
  -q, --quiet                 no progress bars (they are drawn on stderr when it is a terminal)
  -v, --verbose               timings on stderr
  -h, --help`

function helpText(): string {
  const names = Object.keys(COMMANDS)
  const width = Math.max(...names.map((n) => n.length)) + 2
  const list = names.map((name) => `  ${name.padEnd(width)}${COMMANDS[name]?.summary ?? ''}`).join('\n')
  return `paligemma ${packageVersion()}: PaliGemma and PaliGemma 2 on a native engine

Usage: paligemma <command> [options]

Commands:
${list}

Examples:
  paligemma caption --model google/paligemma2-3b-mix-224 --image cat.jpg
  paligemma ask --model ./paligemma2-3b-mix-224 --image cat.jpg "what color is the cat?"
  paligemma detect --model ./paligemma2-3b-mix-224 --image street.jpg car person --out boxes.png
  paligemma info google/paligemma2-3b-mix-224

Run 'paligemma <command> --help' for a command's options. Exit status: 0 ok, 1 failure, 2 usage error.
`
}

function commandHelp(name: string, command: Command): string {
  const sections = [`Usage: paligemma ${command.usage}`, `${command.summary}.`]
  if (command.details) sections.push(command.details)
  if ('device' in command.options) sections.push(MODEL_HELP)
  if ('max-new-tokens' in command.options) sections.push(SAMPLING_HELP)
  if ('json' in command.options) sections.push(OUTPUT_HELP)
  sections.push(`Exit status: 0 ok, 1 failure, 2 usage error. Run 'paligemma --help' for all commands (this is ${name}).`)
  return `${sections.join('\n\n')}\n`
}

let cachedVersion: string | undefined

function packageVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }
      cachedVersion = pkg.version ?? 'unknown'
    } catch {
      cachedVersion = 'unknown'
    }
  }
  return cachedVersion
}

function str(values: Parsed['values'], name: string): string | undefined {
  const value = values[name]
  return typeof value === 'string' ? value : undefined
}

function flag(values: Parsed['values'], name: string): boolean {
  return values[name] === true
}

function numberOption(values: Parsed['values'], name: string, integer: boolean): number | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  const value = Number(text)
  if (text.trim() === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'}, got '${text}'`)
  }
  return value
}

function choice<T extends string>(values: Parsed['values'], name: string, allowed: readonly T[]): T | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  if (!(allowed as readonly string[]).includes(text)) {
    throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got '${text}'`)
  }
  return text as T
}

function samplingOptions(values: Parsed['values']): SamplingOptions {
  const options: SamplingOptions = {}
  const maxNewTokens = numberOption(values, 'max-new-tokens', true)
  const temperature = numberOption(values, 'temperature', false)
  const topK = numberOption(values, 'top-k', true)
  const topP = numberOption(values, 'top-p', false)
  const repetitionPenalty = numberOption(values, 'repetition-penalty', false)
  const seed = numberOption(values, 'seed', true)
  if (maxNewTokens !== undefined) options.maxNewTokens = maxNewTokens
  if (temperature !== undefined) options.temperature = temperature
  if (topK !== undefined) options.topK = topK
  if (topP !== undefined) options.topP = topP
  if (repetitionPenalty !== undefined) options.repetitionPenalty = repetitionPenalty
  if (seed !== undefined) options.seed = seed
  return options
}

function required(value: string | undefined, what: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing required ${what}`)
  return value
}

// ---------------------------------------------------------------------------------------------
// Progress bars (stderr, TTY only)

/** Whether progress bars are drawn: stderr is a terminal and neither --json nor --quiet. */
function showProgress(values: Parsed['values']): boolean {
  return err.isTTY === true && !flag(values, 'json') && !flag(values, 'quiet')
}

function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = 0
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000
    unit++
  }
  return `${value.toFixed(unit === 0 ? 0 : value < 10 ? 2 : 1)} ${units[unit]}`
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`
  return String(n)
}

/** One self-overwriting line on stderr. */
class ProgressBar {
  #started = Date.now()
  #drawn = false
  #lastDraw = 0

  constructor(
    readonly label: string,
    readonly enabled: boolean,
  ) {}

  update(loaded: number, total: number, detail = ''): void {
    if (!this.enabled) return
    const now = Date.now()
    if (loaded < total && now - this.#lastDraw < 80) return
    this.#lastDraw = now
    const fraction = total > 0 ? Math.min(1, loaded / total) : 0
    const columns = Math.max(40, err.columns ?? 80)
    const seconds = (now - this.#started) / 1000
    const rate = seconds > 0.5 ? ` ${formatBytes(loaded / seconds)}/s` : ''
    const text = `${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(loaded)}/${formatBytes(total)}${rate}${detail ? ` ${detail}` : ''}`
    const width = Math.max(10, Math.min(30, columns - this.label.length - text.length - 6))
    const filled = Math.round(fraction * width)
    const line = `${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`
    err.write(`\r\x1b[K${line.slice(0, columns - 1)}`)
    this.#drawn = true
  }

  done(): void {
    if (this.#drawn) err.write('\r\x1b[K')
    this.#drawn = false
  }
}

// ---------------------------------------------------------------------------------------------
// Model loading

/** Cancels the running work on Ctrl-C (a second Ctrl-C exits at once). */
const interrupt = new AbortController()
let interrupted = false

function onSigint(): void {
  if (interrupted) process.exit(130)
  interrupted = true
  interrupt.abort(new Error('interrupted'))
}

function modelArgument(values: Parsed['values']): string {
  const model = str(values, 'model') ?? process.env.PALIGEMMA_MODEL
  if (!model) throw new UsageError('missing required option --model <dir|hub id> (or set PALIGEMMA_MODEL)')
  return model
}

/** Checks the model, device and precision options, so that usage errors come before any work. */
function checkModelOptions(values: Parsed['values']): void {
  modelArgument(values)
  choice<DeviceKind>(values, 'device', ['auto', 'cpu', 'cuda'])
  choice<DType>(values, 'dtype', MODEL_DTYPES)
  numberOption(values, 'threads', true)
  required(str(values, 'image'), 'option --image <path> (use - for stdin)')
}

async function modelDir(values: Parsed['values']): Promise<string> {
  const model = modelArgument(values)
  const revision = str(values, 'revision')
  const bar = new ProgressBar('downloading', showProgress(values))
  try {
    return await resolveModel(model, {
      ...(revision === undefined ? {} : { revision }),
      signal: interrupt.signal,
      onProgress: (p: DownloadProgress) => bar.update(p.loadedBytes, p.totalBytes, p.file),
    })
  } finally {
    bar.done()
  }
}

async function openModel(values: Parsed['values']): Promise<PaliGemma> {
  const device = choice<DeviceKind>(values, 'device', ['auto', 'cpu', 'cuda'])
  const dtype = choice<DType>(values, 'dtype', MODEL_DTYPES)
  const threads = numberOption(values, 'threads', true)
  const dir = await modelDir(values)
  const bar = new ProgressBar('loading', showProgress(values))
  try {
    return await PaliGemma.load(dir, {
      ...(device === undefined ? {} : { device }),
      ...(dtype === undefined ? {} : { dtype }),
      ...(threads === undefined ? {} : { threads }),
      signal: interrupt.signal,
      onProgress: (p: LoadProgress) => bar.update(p.loadedBytes, p.totalBytes),
    })
  } finally {
    bar.done()
  }
}

async function readImage(values: Parsed['values']): Promise<Buffer> {
  const path = required(str(values, 'image'), 'option --image <path> (use - for stdin)')
  if (path === '-') {
    const chunks: Buffer[] = []
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
    return Buffer.concat(chunks)
  }
  try {
    return await readFile(path)
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(error)
    throw new PaliGemmaError('ERR_INVALID_IMAGE', `cannot read the image ${path}: ${reason}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Commands

async function streamText(args: Parsed, prompt: string): Promise<number> {
  const { values } = args
  checkModelOptions(values)
  const sampling = samplingOptions(values)
  const image = await readImage(values)
  const model = await openModel(values)
  try {
    const stream = model.stream({ ...sampling, image, prompt, signal: interrupt.signal })
    const json = flag(values, 'json')
    let printed = ''
    if (!json) {
      for await (const chunk of stream) {
        if (chunk.text) {
          out.write(chunk.text)
          printed += chunk.text
        }
      }
    }
    const result = await stream.result
    if (json) {
      out.write(`${JSON.stringify({ prompt, ...resultJson(result) })}\n`)
    } else {
      // Text held back at the very end (an unfinished character) is only in `result.text`.
      if (result.text.startsWith(printed)) out.write(result.text.slice(printed.length))
      out.write('\n')
    }
    if (flag(values, 'verbose')) printTimings(result)
    return 0
  } finally {
    await model.dispose()
  }
}

function resultJson(result: GenerateResult): Record<string, unknown> {
  return {
    text: result.text,
    tokenIds: result.tokenIds,
    finishReason: result.finishReason,
    seed: result.seed,
    timings: result.timings,
  }
}

function printTimings(result: GenerateResult): void {
  const t = result.timings
  err.write(
    `${t.promptTokens} prompt tokens, ${t.generatedTokens} generated (${result.finishReason}); ` +
      `prefill ${t.prefillMs.toFixed(0)} ms, decode ${t.decodeMs.toFixed(0)} ms (${t.tokensPerSecond.toFixed(1)} tokens/s), seed ${result.seed}\n`,
  )
}

/** Labels for detect/segment: positionals, or `--labels "a; b"`. */
function labelsOf(args: Parsed): string[] {
  const fromFlag = str(args.values, 'labels')
  const labels = [...args.positionals, ...(fromFlag ? fromFlag.split(';') : [])].map((l) => l.trim()).filter(Boolean)
  if (labels.length === 0) throw new UsageError('missing the labels to look for, e.g. `paligemma detect --image x.jpg cat dog`')
  return labels
}

async function runTask(args: Parsed, name: 'detect' | 'segment'): Promise<number> {
  const { values } = args
  const labels = labelsOf(args)
  checkModelOptions(values)
  const outPath = str(values, 'out')
  const vaePath = str(values, 'vae') ?? (process.env.PALIGEMMA_VAE || undefined)
  const sampling = samplingOptions(values)
  const image = await readImage(values)
  const model = await openModel(values)
  try {
    const options = { ...sampling, signal: interrupt.signal }
    let found: Detection[] | Segmentation[]
    let png: Buffer | undefined
    if (name === 'detect') {
      const detections = await model.detect(image, labels, options)
      if (outPath) png = await drawDetections(image, detections)
      found = detections
    } else {
      const segmentations = await model.segment(image, labels, { ...options, ...(vaePath === undefined ? {} : { vaePath }) })
      if (outPath) png = await drawMasks(image, segmentations)
      found = segmentations
    }
    if (outPath && png) {
      await mkdir(dirname(resolve(outPath)), { recursive: true })
      await writeFile(outPath, png)
    }
    if (flag(values, 'json')) {
      const key = name === 'detect' ? 'detections' : 'segmentations'
      out.write(`${JSON.stringify({ labels, [key]: found.map(jsonItem), ...(outPath ? { out: outPath } : {}) })}\n`)
    } else {
      for (const item of found) out.write(`${describeItem(item)}\n`)
      if (found.length === 0) err.write(`nothing found for ${labels.join(', ')}\n`)
      if (outPath) err.write(`wrote ${outPath}\n`)
    }
    return 0
  } finally {
    await model.dispose()
  }
}

/** A detection or segmentation for `--json`: a mask is summarised (its pixels are in the --out image). */
function jsonItem(item: Detection | Segmentation): Record<string, unknown> {
  if (!('mask' in item)) return { ...item }
  const { mask, ...rest } = item
  if (!mask) return { ...rest, mask: null }
  let area = 0
  for (const value of mask.data) if (value !== 0) area++
  return { ...rest, mask: { width: mask.width, height: mask.height, area } }
}

/** `label<TAB>x<TAB>y<TAB>width<TAB>height` (pixels of the original image), plus the mask's area. */
function describeItem(item: Detection | Segmentation): string {
  const { x, y, width, height } = item.box
  const round = (n: number): number => Math.round(n * 10) / 10
  const fields = [item.label || '?', round(x), round(y), round(width), round(height)]
  if ('mask' in item) {
    let area = 0
    if (item.mask) for (const value of item.mask.data) if (value !== 0) area++
    fields.push(item.mask ? `mask ${area} px` : 'no mask')
  }
  return fields.join('\t')
}

async function runInfo(args: Parsed): Promise<number> {
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

async function runConvert(args: Parsed): Promise<number> {
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

async function runConvertVae(args: Parsed): Promise<number> {
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

/** `benches/run.mjs` of a repository checkout, if this package runs from one. */
function benchHarness(): string | undefined {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
  const harness = join(root, 'benches', 'run.mjs')
  return existsSync(harness) ? harness : undefined
}

async function runBench(rest: string[]): Promise<number> {
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

const COMMANDS: Record<string, Command> = {
  caption: {
    summary: 'Caption an image',
    usage: 'caption --model <dir|id> --image <path> [--lang en] [options]',
    details: 'Prompt: "caption <lang>" (for a longer description, mix checkpoints know "describe <lang>": use generate).\nThe caption streams to stdout as it is generated.\n  -l, --lang <code>           language of the caption (default en)',
    options: { ...MODEL_OPTIONS, ...IMAGE_OPTION, lang: { type: 'string', short: 'l' }, ...SAMPLING_OPTIONS, ...OUTPUT_OPTIONS },
    positionals: false,
    run: (args) => streamText(args, `caption ${str(args.values, 'lang') ?? 'en'}`),
  },
  ask: {
    summary: 'Answer a question about an image',
    usage: 'ask --model <dir|id> --image <path> [--lang en] <question...>',
    details:
      'Prompt: "answer <lang> <question>". The question is the rest of the command line (or --question).\n' +
      '  -l, --lang <code>           language of the answer (default en)\n' +
      '      --question <text>       the question, instead of the positionals',
    options: { ...MODEL_OPTIONS, ...IMAGE_OPTION, lang: { type: 'string', short: 'l' }, question: { type: 'string' }, ...SAMPLING_OPTIONS, ...OUTPUT_OPTIONS },
    positionals: true,
    run: (args) => {
      const question = (str(args.values, 'question') ?? args.positionals.join(' ')).trim()
      if (!question) throw new UsageError('missing the question, e.g. `paligemma ask --image x.jpg "what is this?"`')
      return streamText(args, `answer ${str(args.values, 'lang') ?? 'en'} ${question}`)
    },
  },
  ocr: {
    summary: 'Read the text in an image',
    usage: 'ocr --model <dir|id> --image <path> [options]',
    details: 'Prompt: "ocr".',
    options: { ...MODEL_OPTIONS, ...IMAGE_OPTION, ...SAMPLING_OPTIONS, ...OUTPUT_OPTIONS },
    positionals: false,
    run: (args) => streamText(args, 'ocr'),
  },
  detect: {
    summary: 'Find objects: one line per box (label, x, y, width, height in pixels)',
    usage: 'detect --model <dir|id> --image <path> [--out boxes.png] <label...>',
    details:
      'Prompt: "detect <label> ; <label> ...". Labels are the positionals (or --labels "a ; b").\n' +
      '  -o, --out <file.png>        also write the image with the boxes drawn\n' +
      '      --labels <a ; b>        labels separated by ;, instead of (or added to) the positionals',
    options: {
      ...MODEL_OPTIONS,
      ...IMAGE_OPTION,
      labels: { type: 'string' },
      out: { type: 'string', short: 'o' },
      ...SAMPLING_OPTIONS,
      ...OUTPUT_OPTIONS,
    },
    positionals: true,
    run: (args) => runTask(args, 'detect'),
  },
  segment: {
    summary: 'Segment objects: boxes and masks',
    usage: 'segment --model <dir|id> --image <path> [--vae vae.safetensors] [--out masks.png] <label...>',
    details:
      'Prompt: "segment <label> ; ...". Masks are decoded by the segmentation VAE (convert vae-oid.npz with convert-vae).\n' +
      '      --vae <file>            the converted VAE (default: $PALIGEMMA_VAE)\n' +
      '  -o, --out <file.png>        also write the image with the masks drawn',
    options: {
      ...MODEL_OPTIONS,
      ...IMAGE_OPTION,
      labels: { type: 'string' },
      vae: { type: 'string' },
      out: { type: 'string', short: 'o' },
      ...SAMPLING_OPTIONS,
      ...OUTPUT_OPTIONS,
    },
    positionals: true,
    run: (args) => runTask(args, 'segment'),
  },
  generate: {
    summary: 'Run a raw prompt on an image',
    usage: 'generate --model <dir|id> --image <path> --prompt <text> [options]',
    details: 'Prompt: given as is, e.g. "caption es", "answer en where is the cat?", "detect car".\n  -p, --prompt <text>',
    options: { ...MODEL_OPTIONS, ...IMAGE_OPTION, prompt: { type: 'string', short: 'p' }, ...SAMPLING_OPTIONS, ...OUTPUT_OPTIONS },
    positionals: true,
    run: (args) => {
      const prompt = str(args.values, 'prompt') ?? (args.positionals.length > 0 ? args.positionals.join(' ') : undefined)
      return streamText(args, required(prompt, 'option --prompt <text>'))
    },
  },
  info: {
    summary: 'Describe a model: architecture, sizes, parameters, memory',
    usage: 'info <dir|id> [--json]',
    details:
      'Reads config.json and the weight headers only. For a hub id, downloads config.json alone.\n' +
      '  -m, --model <dir|id>        the model, instead of the positional\n' +
      '      --revision <rev>        hub branch, tag or commit (default main)',
    options: { model: { type: 'string', short: 'm' }, revision: { type: 'string' }, ...OUTPUT_OPTIONS },
    positionals: true,
    run: runInfo,
  },
  convert: {
    summary: "Convert a big_vision .npz checkpoint to a model folder",
    usage: 'convert <checkpoint.npz> <out-dir> [--config config.json] [--dtype f32|bf16|f16] [--tokenizer tokenizer.json]',
    details:
      '      --config <file>         config.json to use (default: inferred from the array shapes)\n' +
      '      --dtype <f32|bf16|f16>  precision of the output (default: the checkpoint\'s)\n' +
      '      --tokenizer <file>      tokenizer.json to copy into the folder\n' +
      '      --shard-size <bytes>    most bytes per .safetensors file (default 4 GiB)',
    options: {
      config: { type: 'string' },
      dtype: { type: 'string' },
      tokenizer: { type: 'string' },
      'shard-size': { type: 'string' },
      ...OUTPUT_OPTIONS,
    },
    positionals: true,
    run: runConvert,
  },
  'convert-vae': {
    summary: 'Convert the segmentation VAE (vae-oid.npz) to .safetensors',
    usage: 'convert-vae <vae-oid.npz> <out.safetensors>',
    options: { ...OUTPUT_OPTIONS },
    positionals: true,
    run: runConvertVae,
  },
  quantize: {
    summary: 'Quantize weights ahead of time (not available: quantize on load with --dtype q8_0|q4k)',
    usage: 'quantize',
    details: 'The model commands quantize the text decoder while loading with --dtype q8_0 or --dtype q4k (CPU only); no quantized file format is written.',
    options: { ...OUTPUT_OPTIONS },
    positionals: true,
    run: () => {
      throw new CliError(
        'ERR_NOT_AVAILABLE',
        'quantize is not available in this version: ahead-of-time quantized files are not implemented. ' +
          'The model commands quantize the text decoder as they load with --dtype q8_0 or --dtype q4k (CPU only).',
        2,
      )
    },
  },
  bench: {
    summary: 'Run the benchmark harness (repository checkouts only)',
    usage: 'bench [harness options, e.g. --quick]',
    details: 'Runs benches/run.mjs of a repository checkout with the given options (its --help lists them).',
    options: {},
    positionals: true,
    run: () => Promise.resolve(0),
  },
}

// ---------------------------------------------------------------------------------------------
// Main

function parse(name: string, command: Command, argv: string[]): Parsed {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: command.options, allowPositionals: command.positionals, strict: true })
    return { command: name, values: values as Parsed['values'], positionals }
  } catch (error) {
    const code = (error as { code?: unknown }).code
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
      throw new UsageError((error as Error).message.replace(/\. To specify a positional argument.*$/s, '.'), name)
    }
    throw error
  }
}

/** Runs the CLI on `argv` (the arguments after `paligemma`) and resolves with the exit status. */
async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
      if (name === 'help' && rest[0] && COMMANDS[rest[0]]) {
        out.write(commandHelp(rest[0], COMMANDS[rest[0]] as Command))
        return 0
      }
      ;(name === undefined ? err : out).write(helpText())
      return name === undefined ? 2 : 0
    }
    if (name === '--version' || name === '-V') {
      out.write(`${packageVersion()}\n`)
      return 0
    }
    const command = COMMANDS[name]
    if (!command) {
      const hint = name.startsWith('-') ? `expected a command before '${name}'` : `unknown command '${name}'`
      throw new UsageError(`${hint}; commands: ${Object.keys(COMMANDS).join(', ')}`)
    }
    if (name === 'bench') {
      return await runBench(rest)
    }
    const args = parse(name, command, rest)
    if (flag(args.values, 'help')) {
      out.write(commandHelp(name, command))
      return 0
    }
    if (!command.positionals && args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}'`, name)
    return await command.run(args)
  } catch (error) {
    return report(error, name)
  }
}

function report(error: unknown, name: string | undefined): number {
  if (error instanceof UsageError) {
    const command = error.command ?? (name && COMMANDS[name] ? name : undefined)
    err.write(`paligemma: ERR_USAGE: ${error.message}\n`)
    err.write(command ? `Usage: paligemma ${COMMANDS[command]?.usage ?? command}\nRun 'paligemma ${command} --help' for details.\n` : "Run 'paligemma --help' for usage.\n")
    return 2
  }
  if (error instanceof AbortError && interrupted) {
    err.write('paligemma: interrupted\n')
    return 130
  }
  if (error instanceof PaliGemmaError || error instanceof CliError) {
    err.write(`paligemma: ${error.code}: ${error.message}\n`)
    return error instanceof CliError ? error.exitCode : 1
  }
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error)
  err.write(`paligemma: ERR_INTERNAL: ${message}\n`)
  return 1
}

out.on('error', (error: NodeJS.ErrnoException) => {
  // `paligemma caption ... | head -c 10`: the reader left; stop quietly.
  if (error.code === 'EPIPE') process.exit(0)
  throw error
})
process.on('SIGINT', onSigint)
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.exitCode = report(error, undefined)
  },
)
