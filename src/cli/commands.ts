/**
 * What the image and prompt commands do, and the table of every command with its options and
 * help (`info`, `convert`, `convert-vae` and `bench` run from `checkpoints.ts`).
 *
 * @internal
 */

import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { drawDetections, drawMasks } from '../render.js'
import type { Detection, GenerateResult, Segmentation } from '../types.js'
import { IMAGE_OPTION, MODEL_OPTIONS, OUTPUT_OPTIONS, SAMPLING_OPTIONS, UsageError, err, flag, out, required, samplingOptions, str } from './args.js'
import type { Command, Parsed } from './args.js'
import { checkModelOptions, interrupt, openModel, readImage } from './loading.js'
import { runConvert, runConvertVae, runInfo, runQuantize } from './checkpoints.js'
import { batchCommand, vaeFromOptions } from './batch.js'
import { queueCommands } from './queue.js'
import { runServe } from './serve.js'

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
      `prefill ${t.prefillMs.toFixed(0)} ms, decode ${t.decodeMs.toFixed(0)} ms (${t.tokensPerSecond.toFixed(1)} tokens/s` +
      `${t.decodeGraph ? ', CUDA graph' : ''}), seed ${result.seed}\n`,
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
  const vaePath = name === 'segment' ? vaeFromOptions(values, 'segment') : undefined
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

/** Every command by name, with its options, usage, help and runner. */
export const COMMANDS: Record<string, Command> = {
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
  batch: batchCommand,
  ...queueCommands,
  serve: {
    summary: 'Serve the model over HTTP to OpenAI and Ollama clients',
    usage: 'serve --model <dir|id> [--host 127.0.0.1] [--port 8080] [--api-key <key>] [--max-body <bytes>]',
    details:
      'Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,\n' +
      '  POST /v1/detect, POST /v1/segment, GET /api/tags, GET /api/version, POST /api/generate, POST /api/chat.\n' +
      '  The prompt is the task text of the last user message ("caption en", "detect cat"); it carries one image.\n' +
      '  See docs/serve.md.\n' +
      '      --host <addr>           interface (default 127.0.0.1)\n' +
      '      --port <n>              port (default 8080; 0 picks a free one)\n' +
      '      --api-key <key>         require Authorization: Bearer <key> (or PALIGEMMA_API_KEY)\n' +
      '      --max-body <bytes>      largest request body (default 20000000)\n' +
      '      --max-queue <n>         requests waiting beyond the batch before 429 (default 256)\n' +
      '      --prefill-share <x>     interleave a joining request\'s prefill with the running ones\' steps\n' +
      '                              (CPU; steadier token pace, slower joins; see docs/guarantees.md)\n' +
      '      --cors <origin>         answer cross-origin requests from this origin (* for any)\n' +
      '      --shutdown-timeout <s>  seconds open requests get to finish on Ctrl-C/SIGTERM (default 10)\n' +
      '      --vae <file>            the segmentation VAE, for masks (default: $PALIGEMMA_VAE)\n' +
      '      --no-ui                 no page at / (by default, a page to try the model in a browser)\n' +
      '      --allow-remote-images   fetch http(s) image URLs (at most --max-body bytes, within\n' +
      '                              --remote-image-timeout seconds, default 10); trusted clients only',
    options: {
      ...MODEL_OPTIONS,
      host: { type: 'string' },
      port: { type: 'string' },
      'api-key': { type: 'string' },
      'max-body': { type: 'string' },
      'max-queue': { type: 'string' },
      'prefill-share': { type: 'string' },
      cors: { type: 'string' },
      'shutdown-timeout': { type: 'string' },
      vae: { type: 'string' },
      'allow-remote-images': { type: 'boolean' },
      'remote-image-timeout': { type: 'string' },
      'no-ui': { type: 'boolean' },
      ...OUTPUT_OPTIONS,
    },
    positionals: false,
    run: runServe,
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
    summary: 'Prepare a model folder that loads without converting its weights (CPU: f32, q8_0, q4k)',
    usage: 'quantize <model-dir> <out-dir> [--dtype f32|q8_0|q4k]',
    details:
      '      --dtype <f32|q8_0|q4k>  weight format (default f32; load <out-dir> with the same --dtype)\n' +
      'Writes the weights in the layout the CPU kernels read: f32 is mapped in place, q8_0 and q4k\n' +
      'need no quantization at load. Outputs are bitwise those of <model-dir> with that dtype.\n' +
      'See docs/prepared.md.',
    options: { dtype: { type: 'string' }, ...OUTPUT_OPTIONS },
    positionals: true,
    run: runQuantize,
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
