/**
 * `model.batch`: a task over many images, several in flight at once so that they share the
 * model's decode steps, yielding each result as it finishes. Inputs are pulled only as slots
 * free up, so an async iterable of a million paths costs the memory of `concurrency` of them.
 *
 * @packageDocumentation
 */

import { setMaxListeners } from 'node:events'

import { AbortError, PaliGemmaError, abortErrorFor, errorFromThrown } from '../errors.js'
import { describe, integer, invalid, isRecord, optionalSignal } from '../options.js'
import type { SegmentOptions } from '../tasks.js'
import type { ImageInput } from '../types.js'
import { TASK_SPEC_KEYS, pickTaskSpec, runTask } from './task.js'
import type { TaskResult, TaskRunner, TaskSpec } from './task.js'

/** One image of a batch with its own task (replacing the batch's when it names `task`). */
export interface BatchItem extends TaskSpec {
  /** A path, encoded bytes or raw pixels. */
  image: ImageInput
}

/** What a batch takes: images, or images with their own task. */
export type BatchInput = ImageInput | BatchItem

/** Options of `model.batch`: the task for every image, sampling, image decoding and more. */
export interface BatchOptions extends TaskSpec, SegmentOptions {
  /** Images in flight at once. Default: the model's `info.maxBatch`. */
  concurrency?: number
}

/** One finished image: its result, or the error that stopped it (the batch goes on). */
export type BatchResult =
  | {
      /** Position of the input in the batch, from 0. */
      index: number
      /** The input as given. */
      input: BatchInput
      /** The task's result. */
      result: TaskResult
      /** Absent on success. */
      error?: undefined
    }
  | {
      /** Position of the input in the batch, from 0. */
      index: number
      /** The input as given. */
      input: BatchInput
      /** Absent on failure. */
      result?: undefined
      /** Why this image failed: a bad image or prompt (`ERR_INVALID_IMAGE`, `ERR_INVALID_ARGUMENT`, …). */
      error: PaliGemmaError
    }

/** Errors that end the whole batch rather than one image. */
const FATAL = new Set(['ABORT_ERR', 'ERR_DISPOSED'])

function isBatchItem(input: unknown): input is BatchItem {
  return isRecord(input) && 'image' in input
}

/** The item's image and task: its own task replaces the batch's; its other words add to it. */
function itemTask(input: BatchInput, spec: TaskSpec): { image: ImageInput; spec: TaskSpec } {
  if (!isBatchItem(input)) return { image: input, spec }
  const own = pickTaskSpec(input as unknown as Record<string, unknown>)
  for (const key of Object.keys(input)) {
    if (key !== 'image' && !(TASK_SPEC_KEYS as readonly string[]).includes(key)) throw invalid(`item.${key}`, 'unknown field; an item is { image, task?, prompt?, question?, labels?, lang? }')
  }
  return { image: input.image, spec: own.task !== undefined ? own : { ...spec, ...own } }
}

/**
 * Runs the batch. @internal (`PaliGemma.batch` is the public door.)
 *
 * @param runner - the model.
 * @param maxBatch - the model's running batch, the default concurrency.
 * @param inputs - images or items, sync or async iterable.
 * @param options - the task and its options.
 */
export async function* runBatch(
  runner: TaskRunner,
  maxBatch: number,
  inputs: Iterable<BatchInput> | AsyncIterable<BatchInput>,
  options: BatchOptions = {},
): AsyncGenerator<BatchResult, void, undefined> {
  if (!isRecord(options as unknown)) throw invalid('options', `must be an object, got ${describe(options)}`)
  const { concurrency: rawConcurrency, signal: rawSignal, ...rest } = options
  const concurrency = rawConcurrency === undefined ? maxBatch : integer('concurrency', rawConcurrency, 1, 4096)
  const signal = optionalSignal('signal', rawSignal)
  const spec = pickTaskSpec(rest as Record<string, unknown>)
  const taskOptions: Record<string, unknown> = { ...rest }
  for (const key of TASK_SPEC_KEYS) delete taskOptions[key]
  const source = inputs as Partial<Iterable<BatchInput> & AsyncIterable<BatchInput>> | null
  const open = (source?.[Symbol.asyncIterator] ?? source?.[Symbol.iterator]) as ((this: unknown) => Iterator<BatchInput> | AsyncIterator<BatchInput>) | undefined
  // A string or a byte array is iterable too, but it is one image, not a list of them.
  if (typeof open !== 'function' || typeof inputs === 'string' || ArrayBuffer.isView(inputs)) {
    throw invalid('inputs', `must be an iterable or async iterable of images (e.g. an array of paths), got ${describe(inputs)}`)
  }
  const iterator = open.call(source)

  // One controller for everything in flight: the caller's signal, a fatal error, or the
  // consumer leaving the loop all stop the running generations.
  const stop = new AbortController()
  // Each generation in flight listens on it: `concurrency` listeners is no leak.
  setMaxListeners(concurrency + 10, stop.signal)
  const onAbort = (): void => stop.abort(signal?.reason)
  signal?.addEventListener('abort', onAbort, { once: true })
  const running = new Map<number, Promise<BatchResult>>()
  let next = 0
  let exhausted = false
  try {
    for (;;) {
      while (!exhausted && running.size < concurrency) {
        if (signal?.aborted) throw abortErrorFor(signal)
        const item = await iterator.next()
        if (item.done) {
          exhausted = true
          break
        }
        const index = next++
        const input = item.value
        running.set(index, runOne(runner, input, index, spec, taskOptions, stop.signal))
      }
      if (running.size === 0) return
      const done = await Promise.race(running.values())
      running.delete(done.index)
      if (done.error && FATAL.has(done.error.code)) throw signal?.aborted ? abortErrorFor(signal) : done.error
      yield done
    }
  } finally {
    signal?.removeEventListener('abort', onAbort)
    if (running.size > 0) {
      stop.abort(new AbortError('the batch ended'))
      await Promise.allSettled(running.values())
    }
    if (!exhausted) await iterator.return?.()
  }
}

async function runOne(runner: TaskRunner, input: BatchInput, index: number, spec: TaskSpec, options: Record<string, unknown>, signal: AbortSignal): Promise<BatchResult> {
  try {
    const task = itemTask(input, spec)
    const result = await runTask(runner, task.image, task.spec, { ...(options as SegmentOptions), signal })
    return { index, input, result }
  } catch (error) {
    return { index, input, error: error instanceof PaliGemmaError ? error : errorFromThrown(error) }
  }
}
