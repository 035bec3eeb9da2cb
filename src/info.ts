/**
 * A loaded model's public {@link ModelInfo}, and why a model runs on the CPU when a GPU was
 * possible (the CUDA fallback notes that `load` attaches to it and to its errors).
 *
 * @packageDocumentation
 * @internal
 */

import { cudaFallbackNote } from './native.js'
import type { NativeFailure, NativeModelInfo } from './native.js'
import type { DType, ModelInfo } from './types.js'

/** @internal */
export function publicInfo(info: NativeModelInfo, deviceFallback: string | undefined): ModelInfo {
  return Object.freeze({
    architecture: info.architecture === 'paligemma2' ? 'paligemma2' : 'paligemma',
    imageSize: info.imageSize,
    imageTokens: info.imageTokens,
    imageTokenId: info.imageTokenId,
    bosTokenId: info.bosTokenId,
    eosTokenIds: Object.freeze([...info.eosTokenIds]),
    vocabSize: info.vocabSize,
    hiddenSize: info.hiddenSize,
    contextLength: info.contextLength,
    device: info.device === 'cuda' ? 'cuda' : 'cpu',
    dtype: info.dtype as DType,
    threads: info.threads,
    maxBatch: info.maxBatch,
    kvCacheBytes: info.kvCacheBytes,
    hasTokenizer: info.hasTokenizer,
    ...(deviceFallback === undefined ? {} : { deviceFallback }),
  })
}

/**
 * Why a model loaded with `device: 'auto'` runs on the CPU although a CUDA build is installed:
 * the CUDA addon could not load (see `native()`), or it loaded and opened no GPU.
 */
export function autoFallback(requested: string, info: NativeModelInfo): string | undefined {
  if (info.deviceFallback) return info.deviceFallback
  return requested === 'auto' && info.device === 'cpu' ? cudaFallbackNote() : undefined
}

/** A CPU build's `ERR_DEVICE_UNAVAILABLE` also says why the installed CUDA build did not load. */
export function withCudaNote(failure: NativeFailure): NativeFailure {
  const note = cudaFallbackNote()
  if (failure.code !== 'ERR_DEVICE_UNAVAILABLE' || note === undefined) return failure
  return { code: failure.code, message: `${failure.message} (${note})` }
}
