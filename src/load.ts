/**
 * Loading a model through the addon, off the JS thread: the cancel token wired to `signal`,
 * progress passed on (and a throwing progress callback stopping the load), and freeing a model.
 *
 * @packageDocumentation
 * @internal
 */

import { abortErrorFor, errorFromFailure, errorFromThrown } from './errors.js'
import { resolveLoadTarget } from './hub.js'
import { withCudaNote } from './info.js'
import { isFailure, native, warnCpuFallback } from './native.js'
import type { NativeBinding, NativeModel, NativeProgress } from './native.js'
import type { LoadArgs } from './options.js'

/** Calls `signal`'s abort handler only while `body` runs. */
export async function withSignal<T>(signal: AbortSignal | undefined, onAbort: () => void, body: () => Promise<T>): Promise<T> {
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    return await body()
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

/**
 * Resolves a hub id to a folder (downloading it), then loads the model natively.
 *
 * @param args - the validated arguments of `PaliGemma.load`.
 * @returns the addon and the loaded native model.
 */
export async function loadNative(args: LoadArgs): Promise<{ binding: NativeBinding; model: NativeModel }> {
  args.dir = await resolveLoadTarget(args.dir, { onProgress: args.onProgress, signal: args.signal })
  const { signal } = args
  if (signal?.aborted) throw abortErrorFor(signal)
  let binding: NativeBinding
  try {
    binding = native()
  } catch (error) {
    throw errorFromThrown(error)
  }
  const token = new binding.CancelToken()
  const userProgress = args.onProgress
  let settled = false
  let last: NativeProgress | undefined
  let progressError: { error: unknown } | undefined
  const report = (progress: NativeProgress): void => {
    last = progress
    if (progressError) return
    try {
      userProgress?.({ loadedBytes: progress.loadedBytes, totalBytes: progress.totalBytes, phase: progress.phase })
    } catch (error) {
      // A throwing callback is a bug in the caller: stop loading and reject with its error
      // rather than leave an uncaught exception behind.
      progressError = { error }
      token.cancel()
    }
  }
  const onProgress = userProgress
    ? (progress: NativeProgress): void => {
        if (!settled) report(progress)
      }
    : undefined
  const result = await withSignal(signal, () => token.cancel(), async () => {
    try {
      return await binding.loadModel(args.dir, args.native, token, onProgress)
    } catch (error) {
      throw errorFromThrown(error)
    }
  })
  settled = true
  if (!isFailure(result) && userProgress && (last === undefined || last.loadedBytes !== last.totalBytes)) {
    // Progress and completion travel on separate native channels; make sure the caller sees
    // the final step before `load` resolves.
    const total = result.info.weightBytes
    report({ loadedBytes: total, totalBytes: total, phase: last?.phase ?? 'converting' })
  }
  if (progressError || signal?.aborted) {
    if (!isFailure(result)) await disposeNative(result)
    if (progressError) throw progressError.error
    if (signal) throw abortErrorFor(signal)
  }
  if (isFailure(result)) throw errorFromFailure(withCudaNote(result), signal?.reason)
  // The addon already warned when the CUDA build itself could not load.
  if (result.info.deviceFallback) warnCpuFallback(result.info.deviceFallback)
  return { binding, model: result }
}

/** Frees a native model, waiting for its worker to let go of the weights. */
export async function disposeNative(model: NativeModel): Promise<void> {
  let result: undefined | { code: string; message: string }
  try {
    result = await model.dispose()
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (isFailure(result)) throw errorFromFailure(result)
}
