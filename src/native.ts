/**
 * Loading of the native addon and the shape of its (private) API.
 *
 * The addon is found lazily, on the first `PaliGemma.load`, so that importing the package never
 * throws: a missing or broken binary surfaces as an `ERR_MODEL_LOAD` rejection that lists every
 * place that was tried.
 *
 * @packageDocumentation
 * @internal
 */

import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

import { REQUIRED_X64_FEATURES, missingCpuFeatures } from './cpu.js'
import { PaliGemmaError } from './errors.js'
import type { LoadPhase } from './load-types.js'

/** A failed native operation, delivered as a value (see crates/paligemma-node/src/error.rs). @internal */
export interface NativeFailure {
  code: string
  message: string
}

/** @internal */
export interface NativeProgress {
  loadedBytes: number
  totalBytes: number
  phase: Exclude<LoadPhase, 'download'>
}

/** @internal */
export interface NativeLoadOptions {
  device: string
  dtype?: string
  visionDtype?: string
  threads?: number
  maxBatch?: number
  kvCacheBytes?: number
  prefillShare?: number
}

/** @internal */
export interface NativeModelInfo {
  architecture: string
  imageSize: number
  imageTokens: number
  imageTokenId: number
  bosTokenId: number
  eosTokenIds: number[]
  vocabSize: number
  hiddenSize: number
  contextLength: number
  device: string
  dtype: string
  threads: number
  maxBatch: number
  kvCacheBytes: number
  hasTokenizer: boolean
  weightBytes: number
  /** Why device 'auto' runs on the CPU although the loaded addon has CUDA. */
  deviceFallback?: string
}

/** @internal */
export interface NativeForwardOutput {
  logits: Float32Array
  dims: number[]
}

/** @internal */
export interface NativeGenerateRequest {
  inputIds: Uint32Array
  pixelValues: Float32Array
  maxNewTokens: number
  temperature: number
  topK: number
  topP: number
  repetitionPenalty: number
  seed: number
  stop: string[]
  slidingWindow: boolean
}

/** @internal */
export interface NativeTimings {
  queuedMs: number
  prefillMs: number
  decodeMs: number
  promptTokens: number
  generatedTokens: number
  decodeSteps: number
  decodeGraph: boolean
  batchSize: number
}

/** @internal */
export interface NativeGenerateOutput {
  tokenIds: number[]
  text: string
  finishReason: string
  timings: NativeTimings
}

/** One message of a generation's event channel: tokens, then one `done` or `error`. @internal */
export interface NativeEvent {
  kind: string
  tokenId?: number
  index?: number
  text?: string
  output?: NativeGenerateOutput
  error?: NativeFailure
}

/** @internal */
export interface NativeCancelToken {
  cancel(): void
  readonly cancelled: boolean
}

/** @internal */
export interface NativeModel {
  readonly info: NativeModelInfo
  readonly disposed: boolean
  forward(
    inputIds: Uint32Array,
    pixelValues: Float32Array,
    cancel: NativeCancelToken,
    positions?: Uint32Array,
  ): Promise<NativeForwardOutput | NativeFailure>
  generate(request: NativeGenerateRequest, cancel: NativeCancelToken, onEvent: (event: NativeEvent) => void): void
  dispose(): Promise<undefined | NativeFailure>
}

/** @internal */
export interface NativeBinding {
  CancelToken: new () => NativeCancelToken
  loadModel(
    dir: string,
    options: NativeLoadOptions,
    cancel: NativeCancelToken,
    onProgress?: (progress: NativeProgress) => void,
  ): Promise<NativeModel | NativeFailure>
  addonInfo(): { version: string; cuda: boolean }
}

/** Whether a native result is a failure value rather than a success. @internal */
export function isFailure(value: unknown): value is NativeFailure {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { code?: unknown }).code === 'string' &&
    typeof (value as { message?: unknown }).message === 'string' &&
    !('info' in value)
  )
}

function isMusl(): boolean {
  if (process.platform !== 'linux') return false
  try {
    if (readFileSync('/usr/bin/ldd', 'utf8').includes('musl')) return true
  } catch {
    // No ldd: fall through to the process report.
  }
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
  return !report?.header?.glibcVersionRuntime
}

/** The napi-rs platform suffix, e.g. `linux-x64-gnu`. */
function platformSuffix(): string {
  const base = `${process.platform}-${process.arch}`
  if (process.platform === 'linux') return `${base}-${isMusl() ? 'musl' : 'gnu'}`
  if (process.platform === 'win32') return `${base}-msvc`
  return base
}

let cached: NativeBinding | undefined

/** Whether the CUDA variant may be tried (`PALIGEMMA_NO_CUDA=1` opts out). */
function cudaAllowed(suffix: string): boolean {
  return suffix === 'linux-x64-gnu' && !/^(1|true|yes)$/i.test(process.env.PALIGEMMA_NO_CUDA ?? '')
}

let fallbackNote: string | undefined
const warned = new Set<string>()

/**
 * Tells the user, once per process and reason, that work meant for a GPU runs on the CPU (a
 * `PALIGEMMA_CPU_FALLBACK` process warning, which Node prints on stderr).
 *
 * @internal
 */
export function warnCpuFallback(reason: string): void {
  if (warned.has(reason)) return
  warned.add(reason)
  process.emitWarning(`paligemma: ${reason}`, { code: 'PALIGEMMA_CPU_FALLBACK' })
}

/**
 * Why a CUDA build was not used, when one was installed but failed to load (for example no
 * NVIDIA driver: `libcuda.so.1` missing). `undefined` when no CUDA build was tried or it loaded.
 *
 * @internal
 */
export function cudaFallbackNote(): string | undefined {
  return fallbackNote
}

/**
 * Loads the addon, in this order: `PALIGEMMA_NATIVE_LIBRARY_PATH` (a `.node` file, e.g. a custom
 * build); on Linux x64 the CUDA variant (package `paligemma-linux-x64-gnu-cuda`, then the local
 * build in `<repo>/npm/linux-x64-gnu-cuda/`), which also runs on the CPU; then the CPU package
 * `paligemma-<platform>` and the local build in `<repo>/npm/<platform>/`. A CUDA build that is
 * installed but cannot load (no driver) is skipped with a warning, so `device: 'auto'` falls
 * back to the CPU build.
 *
 * @internal
 */
export function native(): NativeBinding {
  if (cached) return cached
  const require = createRequire(import.meta.url)
  const suffix = platformSuffix()
  const local = (variant: string) => fileURLToPath(new URL(`../../npm/${variant}/paligemma.${variant}.node`, import.meta.url))
  const cudaCandidates = cudaAllowed(suffix) ? [`paligemma-${suffix}-cuda`, local(`${suffix}-cuda`)] : []
  const candidates: string[] = []
  const override = process.env.PALIGEMMA_NATIVE_LIBRARY_PATH
  if (override) candidates.push(override)
  else {
    // The prebuilt x64 addons would die with SIGILL on a CPU without these instructions.
    const missing = missingCpuFeatures()
    if (missing && missing.length > 0) {
      throw new PaliGemmaError(
        'ERR_DEVICE_UNAVAILABLE',
        `this CPU lacks ${missing.map((f) => f.toUpperCase()).join(', ')}, which paligemma's x64 builds need ` +
          `(${REQUIRED_X64_FEATURES.map((f) => f.toUpperCase()).join(', ')}: Intel Haswell, AMD Excavator or Zen, and later). ` +
          'A build for this CPU: drop the target-feature line of .cargo/config.toml, `npm run build:native`, and point PALIGEMMA_NATIVE_LIBRARY_PATH at it (much slower kernels).',
      )
    }
  }
  candidates.push(...cudaCandidates, `paligemma-${suffix}`, local(suffix))
  const failures: string[] = []
  const cudaFailures: string[] = []
  for (const candidate of candidates) {
    const isLocal = candidate.endsWith('.node') && candidate !== override
    if (isLocal && !existsSync(candidate)) {
      if (!cudaCandidates.includes(candidate)) failures.push(`${candidate}: not found (run \`npm run build:native\`)`)
      continue
    }
    try {
      cached = require(candidate) as NativeBinding
      if (cudaFailures.length > 0) {
        fallbackNote = `the CUDA build could not be loaded (${cudaFailures.join('; ')}); using the CPU build`
        warnCpuFallback(fallbackNote)
      }
      return cached
    } catch (error) {
      const reason = `${candidate}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`
      const missingPackage = error instanceof Error && 'code' in error && error.code === 'MODULE_NOT_FOUND' && !isLocal
      if (cudaCandidates.includes(candidate)) {
        if (!missingPackage) cudaFailures.push(reason)
      } else {
        failures.push(reason)
      }
    }
  }
  throw new PaliGemmaError(
    'ERR_MODEL_LOAD',
    `cannot load the paligemma native addon for ${suffix}. Tried:\n  - ${[...cudaFailures, ...failures].join('\n  - ')}\n` +
      `Install the optional dependency paligemma-${suffix} (npm may skip optional dependencies: ` +
      'reinstall without --omit=optional), or build it with `npm run build:native`.',
  )
}
