/**
 * Opening a model and reading an image for a command, and Ctrl-C handling.
 *
 * @internal
 */

import { readFile } from 'node:fs/promises'
import { PaliGemmaError } from '../errors.js'
import { resolveModel } from '../hub.js'
import type { DownloadProgress } from '../hub.js'
import { PaliGemma } from '../model.js'
import type { DType, DeviceKind, LoadOptions, LoadProgress } from '../types.js'
import { MODEL_DTYPES, UsageError, choice, integerAtLeast, required, str } from './args.js'
import type { Parsed } from './args.js'
import { ProgressBar, showProgress } from './progress.js'

/** Cancels the running work on Ctrl-C (a second Ctrl-C exits at once). */
export const interrupt = new AbortController()
/** Whether Ctrl-C was pressed (the exit status is then 130). */
export let interrupted = false

/** The SIGINT handler: aborts the running work, or exits at a second Ctrl-C. */
export function onSigint(): void {
  if (interrupted) process.exit(130)
  interrupted = true
  interrupt.abort(new Error('interrupted'))
}

/** Resolves at SIGTERM or Ctrl-C: when a long-running command (serve, worker) should stop. */
export function stopRequested(): Promise<void> {
  return new Promise((done) => {
    if (interrupt.signal.aborted) return done()
    interrupt.signal.addEventListener('abort', () => done(), { once: true })
    process.once('SIGTERM', () => done())
  })
}

function modelArgument(values: Parsed['values']): string {
  const model = str(values, 'model') ?? process.env.PALIGEMMA_MODEL
  if (!model) throw new UsageError('missing required option --model <dir|hub id> (or set PALIGEMMA_MODEL)')
  return model
}

/** Checks the model, device and precision options, so that usage errors come before any work. */
export function checkModelOptions(values: Parsed['values']): void {
  modelArgument(values)
  choice<DeviceKind>(values, 'device', ['auto', 'cpu', 'cuda'])
  choice<DType>(values, 'dtype', MODEL_DTYPES)
  choice(values, 'vision-dtype', ['f32', 'bf16'] as const)
  integerAtLeast(values, 'threads', 1)
  required(str(values, 'image'), 'option --image <path> (use - for stdin)')
}

/** The model folder for `--model`: a local folder, or a Hub id resolved (and downloaded) first. */
export async function modelDir(values: Parsed['values']): Promise<string> {
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

/**
 * Loads the model that `--model` names, with the model options (and `extra` load options, such
 * as serve's `prefillShare`), showing progress on a TTY.
 */
export async function openModel(values: Parsed['values'], extra: Pick<LoadOptions, 'prefillShare'> = {}): Promise<PaliGemma> {
  const device = choice<DeviceKind>(values, 'device', ['auto', 'cpu', 'cuda'])
  const dtype = choice<DType>(values, 'dtype', MODEL_DTYPES)
  const visionDtype = choice(values, 'vision-dtype', ['f32', 'bf16'] as const)
  const threads = integerAtLeast(values, 'threads', 1)
  const dir = await modelDir(values)
  const bar = new ProgressBar('loading', showProgress(values))
  try {
    return await PaliGemma.load(dir, {
      ...(device === undefined ? {} : { device }),
      ...(dtype === undefined ? {} : { dtype }),
      ...(visionDtype === undefined ? {} : { visionDtype }),
      ...(threads === undefined ? {} : { threads }),
      ...extra,
      signal: interrupt.signal,
      onProgress: (p: LoadProgress) => bar.update(p.loadedBytes, p.totalBytes, p.phase),
    })
  } finally {
    bar.done()
  }
}

/** The bytes of the `--image` file (`-` reads stdin). */
export async function readImage(values: Parsed['values']): Promise<Buffer> {
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
