/**
 * `paligemma batch`: one task over a folder, a glob or a list of images, several in flight,
 * each result appended to a JSON-lines file as it finishes. Rerunning with the same `--out`
 * skips what is done.
 *
 * @internal
 */

import { statSync } from 'node:fs'

import { listImages } from '../batch/inputs.js'
import { JsonlWriter } from '../batch/jsonl.js'
import { TASK_NAMES, taskResultJson, taskSpecPrompt } from '../batch/task.js'
import type { TaskName, TaskSpec } from '../batch/task.js'
import { AbortError } from '../errors.js'
import { MODEL_OPTIONS, OUTPUT_OPTIONS, SAMPLING_OPTIONS, UsageError, choice, err, flag, integerAtLeast, required, samplingOptions, str } from './args.js'
import type { Command, Parsed } from './args.js'
import { interrupt, openModel } from './loading.js'
import { CountProgress, showProgress } from './progress.js'

/** `--task` and `--prompt` as a task spec: `--prompt` is the question, the labels or the prompt. */
export function taskFromOptions(values: Parsed['values']): TaskSpec {
  const task: TaskName = choice(values, 'task', TASK_NAMES) ?? 'caption'
  const prompt = str(values, 'prompt')
  const lang = str(values, 'lang')
  const spec: TaskSpec = { task }
  if (prompt !== undefined) {
    if (task === 'caption' || task === 'ocr') throw new UsageError(`--prompt does not apply to --task ${task}`)
    if (task === 'ask') spec.question = prompt
    else if (task === 'generate') spec.prompt = prompt
    else spec.labels = prompt
  }
  const needs = { ask: 'the question', detect: 'the labels, "cat ; dog"', segment: 'the labels, "cat ; dog"', generate: 'the prompt' } as const
  if (prompt === undefined && task in needs) throw new UsageError(`--task ${task} needs --prompt <${needs[task as keyof typeof needs]}>`)
  if (lang !== undefined) spec.lang = lang
  try {
    taskSpecPrompt(spec)
  } catch (error) {
    throw new UsageError(`${(error as Error).message.replace(/^invalid argument `(\w+)`/, (_, name: string) => (name === 'lang' ? '--lang' : '--prompt'))}`)
  }
  return spec
}

/** The `--vae` file, or $PALIGEMMA_VAE, for `--task segment`. */
export function vaeFromOptions(values: Parsed['values'], task: TaskName | undefined): string | undefined {
  const vaePath = str(values, 'vae') ?? (process.env.PALIGEMMA_VAE || undefined)
  if (task !== 'segment') return undefined
  if (vaePath === undefined) throw new UsageError('segment needs --vae <vae-oid.safetensors> (or PALIGEMMA_VAE): the mask decoder, converted from vae-oid.npz with convert-vae')
  if (!statSync(vaePath, { throwIfNoEntry: false })?.isFile()) throw new UsageError(`--vae: no file at ${vaePath} (convert vae-oid.npz with convert-vae)`)
  return vaePath
}

async function runBatchCommand(args: Parsed): Promise<number> {
  const { values, positionals } = args
  const spec = taskFromOptions(values)
  const vaePath = vaeFromOptions(values, spec.task)
  const outPath = required(str(values, 'out'), 'option --out <results.jsonl>')
  const concurrency = integerAtLeast(values, 'concurrency', 1)
  if (positionals.length === 0) throw new UsageError('batch needs the images: <folder|glob|list.txt|image>...')
  const sampling = samplingOptions(values)

  const images = await listImages(positionals)
  const { writer, done } = await JsonlWriter.open(outPath, 'path')
  const todo = images.filter((path) => !done.has(path))
  const prompt = taskSpecPrompt(spec)
  const mode = flag(values, 'json-progress') ? 'json' : showProgress(values) ? 'bar' : 'none'
  if (done.size > 0) err.write(`paligemma: ${images.length - todo.length} of ${images.length} images are already in ${outPath}\n`)
  if (todo.length === 0) {
    writer.close()
    return 0
  }
  const model = await openModel(values)
  const progress = new CountProgress(todo.length, mode)
  let finished = 0
  let failed = 0
  const started = performance.now()
  try {
    const options = { ...spec, ...sampling, signal: interrupt.signal, ...(concurrency === undefined ? {} : { concurrency }), ...(vaePath === undefined ? {} : { vaePath }) }
    for await (const { index, result, error } of model.batch(todo, options)) {
      const head = { path: todo[index], task: spec.task, prompt }
      if (error) {
        failed++
        writer.write({ ...head, error: { code: error.code, message: error.message } })
      } else writer.write({ ...head, ...taskResultJson(result) })
      progress.update(++finished, failed)
    }
  } catch (error) {
    if (!(error instanceof AbortError)) throw error
  } finally {
    progress.update(finished, failed, true)
    progress.done()
    writer.close()
    await model.dispose()
  }
  const seconds = (performance.now() - started) / 1000
  const rate = (finished / seconds).toFixed(2)
  if (interrupt.signal.aborted) {
    err.write(`paligemma: interrupted after ${finished} of ${todo.length} images; run the same command again to go on\n`)
    return 130
  }
  err.write(`paligemma: ${finished} images in ${seconds.toFixed(1)} s (${rate} images/s), ${failed} failed; results in ${outPath}\n`)
  return failed > 0 ? 1 : 0
}

/** The task options that `batch` and `enqueue` share. */
export const TASK_OPTIONS: Command['options'] = {
  task: { type: 'string' },
  prompt: { type: 'string', short: 'p' },
  lang: { type: 'string' },
}

/** The help lines of {@link TASK_OPTIONS}. */
export const TASK_HELP =
  `      --task <name>           ${TASK_NAMES.join('|')} (default caption)\n` +
  '  -p, --prompt <text>         the question (ask), the labels "cat ; dog" (detect, segment), or the\n' +
  '                              whole prompt (generate)\n' +
  '      --lang <code>           the language of captions and answers (default en)\n'

/** `paligemma batch`. */
export const batchCommand: Command = {
  summary: 'Run a task over many images, writing one JSON line per image (resumable)',
  usage: 'batch --model <dir|id> [--task caption] [--prompt <text>] --out results.jsonl <folder|glob|list.txt|image>...',
  details:
    'Images: folders (walked recursively), quoted glob patterns ("photos/**/*.jpg"), .txt lists (one path\n' +
    '  per line, relative to the list) and image files. Each line of --out holds path, task, prompt, text,\n' +
    '  tokenIds, finishReason, detections or segmentations (masks as COCO RLE), timings and image size, or\n' +
    '  path and error {code, message}. A rerun with the same --out skips the images done and retries the\n' +
    '  failed ones. Exit status 1 when any image failed, 130 when interrupted (the lines written are whole).\n' +
    TASK_HELP +
    '      --out <file>            the JSON-lines results file (appended to)\n' +
    '      --concurrency <n>       images in flight (default: the model\'s batch, 16 on the CPU)\n' +
    '      --vae <file>            the segmentation VAE for --task segment (default: $PALIGEMMA_VAE)\n' +
    '      --json-progress         progress as JSON lines on stderr: done, total, failed, imagesPerSecond, etaSeconds',
  options: {
    ...MODEL_OPTIONS,
    ...TASK_OPTIONS,
    out: { type: 'string', short: 'o' },
    concurrency: { type: 'string' },
    vae: { type: 'string' },
    'json-progress': { type: 'boolean' },
    ...SAMPLING_OPTIONS,
    ...OUTPUT_OPTIONS,
  },
  positionals: true,
  run: runBatchCommand,
}
