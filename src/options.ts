/**
 * Validation of everything a caller passes, before it reaches native code. Plain-JS callers
 * get an `ERR_INVALID_ARGUMENT` that names the option and what was wrong; the native side checks
 * again.
 *
 * @packageDocumentation
 * @internal
 */

import { getRandomValues } from 'node:crypto'

import { PaliGemmaError } from './errors.js'
import type { NativeGenerateRequest, NativeLoadOptions, NativeModelInfo, NativeProgress } from './native.js'
import type { LoadProgress } from './types.js'

/** Default `maxNewTokens` when the request does not set one. */
export const DEFAULT_MAX_NEW_TOKENS = 256

/** @internal */
export function invalid(name: string, message: string): PaliGemmaError {
  return new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`${name}\`: ${message}`)
}

/**
 * The error for something thrown while reading a caller's arguments. Our own checks throw
 * {@link PaliGemmaError}s, which pass through; anything else came from the caller's objects (a
 * getter or Proxy trap that throws, a revoked Proxy) and becomes `ERR_INVALID_ARGUMENT` naming
 * what was being read, with the original as `cause`.
 *
 * @internal
 */
export function argumentError(error: unknown, where = 'arguments'): PaliGemmaError {
  if (error instanceof PaliGemmaError) return error
  const what = error instanceof Error ? `${error.name}: ${error.message}` : describe(error)
  return new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`${where}\`: reading it threw ${what}`, { cause: error })
}

/** A short description of a value for error messages. @internal */
export function describe(value: unknown): string {
  if (value === null) return 'null'
  if (typeof value === 'object') {
    try {
      if (Array.isArray(value)) return 'an array'
      const name: unknown = value.constructor?.name
      return `an object (${typeof name === 'string' ? name : 'no prototype'})`
    } catch {
      return 'an object (unreadable: a revoked Proxy or a throwing getter)'
    }
  }
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`
  return `${typeof value} ${String(value)}`
}

/** Whether `value` is a plain object (not null, not an array). @internal */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Rejects keys outside `allowed`, naming the first unknown one. @internal */
export function checkKeys(where: string, value: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw invalid(`${where}.${key}`, `unknown option; expected one of ${allowed.join(', ')}`)
    }
  }
}

function isAbortSignal(value: unknown): value is AbortSignal {
  return value instanceof AbortSignal
}

/** An optional `AbortSignal` option. @internal */
export function optionalSignal(name: string, value: unknown): AbortSignal | undefined {
  if (value === undefined) return undefined
  if (!isAbortSignal(value)) throw invalid(name, `must be an AbortSignal, got ${describe(value)}`)
  return value
}

/** An integer option in `[min, max]`. @internal */
export function integer(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(name, `must be an integer in [${min}, ${max}], got ${describe(value)}`)
  }
  return value
}

function finite(name: string, value: unknown, ok: (v: number) => boolean, range: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || !ok(value)) {
    throw invalid(name, `must be a finite number ${range}, got ${describe(value)}`)
  }
  return value
}

const LOAD_KEYS = ['device', 'dtype', 'visionDtype', 'threads', 'maxBatch', 'kvCacheBytes', 'prefillShare', 'onProgress', 'signal', 'vaePath'] as const

/** Validated arguments of `PaliGemma.load`. @internal */
export interface LoadArgs {
  dir: string
  native: NativeLoadOptions
  onProgress?: (progress: NativeProgress) => void
  signal?: AbortSignal
  /** The default mask decoder weights of `segment()`. */
  vaePath?: string
}

/** @internal */
export function validateLoadArgs(modelDir: unknown, options: unknown): LoadArgs {
  if (typeof modelDir !== 'string' || modelDir.length === 0) {
    throw invalid('modelDir', `must be a non-empty path string, got ${describe(modelDir)}`)
  }
  if (options === undefined) return { dir: modelDir, native: { device: 'auto' } }
  if (!isRecord(options)) throw invalid('options', `must be an object, got ${describe(options)}`)
  checkKeys('options', options, LOAD_KEYS)
  const device = options.device ?? 'auto'
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') {
    throw invalid('device', `must be 'auto', 'cpu' or 'cuda', got ${describe(device)}`)
  }
  const dtype = options.dtype
  if (dtype !== undefined && !['f32', 'f16', 'bf16', 'q8_0', 'q4k'].includes(dtype as string)) {
    throw invalid('dtype', `must be 'f32', 'f16', 'bf16', 'q8_0' or 'q4k', got ${describe(dtype)}`)
  }
  const visionDtype = options.visionDtype
  if (visionDtype !== undefined && visionDtype !== 'f32' && visionDtype !== 'bf16') {
    throw invalid('visionDtype', `must be 'f32' or 'bf16', got ${describe(visionDtype)}`)
  }
  const threads = options.threads === undefined ? undefined : integer('threads', options.threads, 1, 1024)
  const maxBatch = options.maxBatch === undefined ? undefined : integer('maxBatch', options.maxBatch, 1, 4096)
  const kvCacheBytes = options.kvCacheBytes === undefined ? undefined : integer('kvCacheBytes', options.kvCacheBytes, 1, Number.MAX_SAFE_INTEGER)
  const prefillShare = options.prefillShare
  if (prefillShare !== undefined && (typeof prefillShare !== 'number' || !Number.isFinite(prefillShare) || prefillShare < 0 || prefillShare > 1000)) {
    throw invalid('prefillShare', `must be a number from 0 to 1000, got ${describe(prefillShare)}`)
  }
  const onProgress = options.onProgress
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw invalid('onProgress', `must be a function, got ${describe(onProgress)}`)
  }
  const vaePath = options.vaePath
  if (vaePath !== undefined && (typeof vaePath !== 'string' || vaePath.length === 0)) {
    throw invalid('vaePath', `must be a non-empty path string, got ${describe(vaePath)}`)
  }
  // Narrowed by the check above; TS cannot carry a negated compound condition over.
  const defaultVae = typeof vaePath === 'string' ? vaePath : undefined
  const native: NativeLoadOptions = { device }
  if (typeof dtype === 'string') native.dtype = dtype
  if (typeof visionDtype === 'string') native.visionDtype = visionDtype
  if (threads !== undefined) native.threads = threads
  if (maxBatch !== undefined) native.maxBatch = maxBatch
  if (kvCacheBytes !== undefined) native.kvCacheBytes = kvCacheBytes
  if (typeof prefillShare === 'number') native.prefillShare = prefillShare
  return {
    dir: modelDir,
    native,
    onProgress: onProgress as ((progress: LoadProgress) => void) | undefined,
    signal: optionalSignal('signal', options.signal),
    vaePath: defaultVae,
  }
}

/**
 * Checks token ids against the model and copies them into a `Uint32Array`.
 *
 * @internal
 */
export function validateInputIds(value: unknown, info: NativeModelInfo): Uint32Array {
  if (
    value === null ||
    typeof value !== 'object' ||
    typeof (value as { length?: unknown }).length !== 'number'
  ) {
    throw invalid('inputIds', `must be an array or typed array of token ids, got ${describe(value)}`)
  }
  const source = value as ArrayLike<unknown>
  const n = source.length
  if (!Number.isSafeInteger(n) || n < 0) {
    throw invalid('inputIds', `must be an array or typed array of token ids, got an object whose length is ${describe(n)}`)
  }
  if (n === 0) throw invalid('inputIds', 'is empty')
  if (n > info.contextLength) {
    throw invalid('inputIds', `has ${n} tokens; the model supports at most ${info.contextLength} positions`)
  }
  const ids = new Uint32Array(n)
  let images = 0
  for (let i = 0; i < n; i++) {
    const id = source[i]
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw invalid('inputIds', `entry ${i} must be a non-negative integer token id, got ${describe(id)}`)
    }
    if (id === info.imageTokenId) {
      images++
    } else if (id >= info.vocabSize) {
      throw invalid('inputIds', `id ${id} at index ${i} is outside the vocabulary of ${info.vocabSize}`)
    }
    ids[i] = id
  }
  if (images !== info.imageTokens) {
    throw invalid(
      'inputIds',
      `contains ${images} image tokens (id ${info.imageTokenId}); this model expects exactly ${info.imageTokens}, one per image patch`,
    )
  }
  return ids
}

/** @internal */
export function validatePixelValues(value: unknown, info: NativeModelInfo): Float32Array {
  const s = info.imageSize
  const expected = 3 * s * s
  if (!(value instanceof Float32Array)) {
    throw invalid('pixelValues', `must be a Float32Array of 3×${s}×${s} = ${expected} CHW values, got ${describe(value)}`)
  }
  if (value.length !== expected) {
    throw invalid('pixelValues', `has ${value.length} values; this model takes 3×${s}×${s} = ${expected} (CHW float32)`)
  }
  return value
}

const FORWARD_KEYS = ['inputIds', 'pixelValues', 'positions', 'signal'] as const

/** Largest logits array `forward` returns (2 GiB, one `Float32Array`); the addon checks again. */
const MAX_FORWARD_LOGITS_BYTES = 2 ** 31

/** @internal */
export function validateForwardInput(
  input: unknown,
  info: NativeModelInfo,
): { inputIds: Uint32Array; pixelValues: Float32Array; positions?: Uint32Array; signal?: AbortSignal } {
  if (!isRecord(input)) throw invalid('input', `must be an object { inputIds, pixelValues }, got ${describe(input)}`)
  checkKeys('input', input, FORWARD_KEYS)
  const inputIds = validateInputIds(input.inputIds, info)
  const positions = validatePositions(input.positions, inputIds.length)
  const rows = positions?.length ?? inputIds.length
  if (rows * info.vocabSize * 4 > MAX_FORWARD_LOGITS_BYTES) {
    throw invalid(
      'positions',
      `logits for ${rows} positions × ${info.vocabSize} vocabulary entries would take ${rows * info.vocabSize * 4} bytes, ` +
        `more than the ${MAX_FORWARD_LOGITS_BYTES}-byte limit; pass positions: 'last' or a list of positions`,
    )
  }
  return {
    inputIds,
    pixelValues: validatePixelValues(input.pixelValues, info),
    ...(positions === undefined ? {} : { positions }),
    signal: optionalSignal('signal', input.signal),
  }
}

/** `forward`'s `positions`: `'all'` (or absent), `'last'`, or a list of prompt positions. */
function validatePositions(value: unknown, seq: number): Uint32Array | undefined {
  if (value === undefined || value === 'all') return undefined
  if (value === 'last') return Uint32Array.of(Math.max(seq - 1, 0))
  if (!Array.isArray(value) && !(value instanceof Uint32Array)) {
    throw invalid('positions', `must be 'all', 'last' or an array of positions, got ${describe(value)}`)
  }
  const list = Array.from(value as ArrayLike<unknown>)
  if (list.length === 0) throw invalid('positions', 'must name at least one position')
  list.forEach((p, i) => {
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p >= seq) {
      throw invalid('positions', `entry ${i} must be an integer in [0, ${seq - 1}] (the prompt has ${seq} positions), got ${describe(p)}`)
    }
  })
  return Uint32Array.from(list as number[])
}

/** Options every generation request accepts. @internal */
export const SAMPLING_KEYS = ['maxNewTokens', 'temperature', 'topK', 'topP', 'repetitionPenalty', 'seed', 'stop', 'slidingWindow', 'signal'] as const
const REQUEST_KEYS = ['inputIds', 'pixelValues', ...SAMPLING_KEYS] as const

/** A fresh seed in [0, 2^53 − 1]. */
function randomSeed(): number {
  const [hi, lo] = getRandomValues(new Uint32Array(2))
  return ((hi ?? 0) & 0x1f_ffff) * 2 ** 32 + (lo ?? 0)
}

/** @internal */
export function validateGenerateRequest(
  request: unknown,
  info: NativeModelInfo,
): { native: NativeGenerateRequest; signal?: AbortSignal } {
  if (!isRecord(request)) {
    throw invalid('request', `must be an object { inputIds, pixelValues, ...options }, got ${describe(request)}`)
  }
  if (request.inputIds === undefined) {
    throw invalid('inputIds', 'is required (or pass { image, prompt })')
  }
  checkKeys('request', request, REQUEST_KEYS)
  const inputIds = validateInputIds(request.inputIds, info)
  const pixelValues = validatePixelValues(request.pixelValues, info)
  const room = info.contextLength - inputIds.length
  let maxNewTokens: number
  if (request.maxNewTokens === undefined) {
    maxNewTokens = Math.min(DEFAULT_MAX_NEW_TOKENS, room)
    if (maxNewTokens < 1) {
      throw invalid('inputIds', `has ${inputIds.length} tokens, which leaves no room to generate in the model's ${info.contextLength} positions`)
    }
  } else {
    maxNewTokens = integer('maxNewTokens', request.maxNewTokens, 1, 2 ** 31 - 1)
    if (maxNewTokens > room) {
      throw invalid(
        'maxNewTokens',
        `${maxNewTokens} new tokens after a ${inputIds.length}-token prompt exceed the model's ${info.contextLength} positions; at most ${Math.max(room, 0)} fit`,
      )
    }
  }
  return {
    native: { inputIds, pixelValues, maxNewTokens, ...validateSampling(request, info) },
    signal: optionalSignal('signal', request.signal),
  }
}

/**
 * Validates the sampling options shared by every request kind (all but `maxNewTokens`, whose
 * limit depends on the prompt length).
 *
 * @internal
 */
export function validateSampling(
  request: Record<string, unknown>,
  info: NativeModelInfo,
): Omit<NativeGenerateRequest, 'inputIds' | 'pixelValues' | 'maxNewTokens'> {
  const temperature = request.temperature === undefined ? 0 : finite('temperature', request.temperature, (v) => v >= 0, '≥ 0')
  const topK = request.topK === undefined ? 0 : integer('topK', request.topK, 0, 2 ** 32 - 1)
  const topP = request.topP === undefined ? 1 : finite('topP', request.topP, (v) => v > 0 && v <= 1, 'in (0, 1]')
  const repetitionPenalty =
    request.repetitionPenalty === undefined ? 1 : finite('repetitionPenalty', request.repetitionPenalty, (v) => v > 0, '> 0')
  const seed = request.seed === undefined ? randomSeed() : integer('seed', request.seed, 0, Number.MAX_SAFE_INTEGER)
  let stop: string[] = []
  if (request.stop !== undefined) {
    if (!Array.isArray(request.stop)) throw invalid('stop', `must be an array of strings, got ${describe(request.stop)}`)
    // Array.from visits holes (`[, 'a']`) as undefined, where `map` would skip and keep them.
    stop = Array.from(request.stop as unknown[], (s: unknown, i: number) => {
      if (typeof s !== 'string' || s.length === 0) {
        throw invalid('stop', `entry ${i} must be a non-empty string, got ${describe(s)}`)
      }
      return s
    })
    if (stop.length > 0 && !info.hasTokenizer) {
      throw invalid('stop', 'stop strings need the model\'s tokenizer, and the model folder has no tokenizer.json; omit `stop` or add the tokenizer')
    }
  }
  if (request.slidingWindow !== undefined && typeof request.slidingWindow !== 'boolean') {
    throw invalid('slidingWindow', `must be a boolean, got ${describe(request.slidingWindow)}`)
  }
  const slidingWindow = request.slidingWindow === true
  return { temperature, topK, topP, repetitionPenalty, seed, stop, slidingWindow }
}
