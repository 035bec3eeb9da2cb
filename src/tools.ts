/**
 * Model tooling: describe a checkpoint without loading it, and convert Google's big_vision
 * `.npz` checkpoints (and the segmentation VAE) into the Hugging Face layout.
 *
 * @packageDocumentation
 */

import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs'
import { join } from 'node:path'

import { errorFromFailure, errorFromThrown, PaliGemmaError } from './errors.js'
import { isFailure, native } from './native.js'
import type { NativeBinding, NativeFailure } from './native.js'

/** @internal */
interface NativeModelSummary {
  architecture: string
  imageSize: number
  patchSize: number
  imageTokens: number
  imageTokenId: number
  bosTokenId: number
  eosTokenIds: number[]
  visionLayers: number
  visionHiddenSize: number
  visionIntermediateSize: number
  visionHeads: number
  textLayers: number
  hiddenSize: number
  intermediateSize: number
  heads: number
  kvHeads: number
  headDim: number
  vocabSize: number
  contextLength: number
  slidingWindow?: number | null
  slidingLayers: number
  parameterCount: number
  visionParameters: number
  projectorParameters: number
  textParameters: number
  embeddingParameters: number
  tensorCount: number
}

/** @internal */
interface NativeConvertOptions {
  config?: string
  dtype?: string
  tokenizer?: string
  shardBytes?: number
}

/** What {@link convertCheckpoint} wrote. */
export interface ConvertReport {
  /** The `.safetensors` files written, in order (one unless sharded). */
  files: string[]
  /** Tensors written. */
  tensors: number
  /** Bytes of tensor data. */
  bytes: number
  /** Precision of the written weights. */
  dtype: 'f32' | 'bf16' | 'f16'
  /** `'paligemma'` or `'paligemma2'`. */
  architecture: 'paligemma' | 'paligemma2'
  /** Whether `config.json` was inferred from the array shapes rather than given. */
  configInferred: boolean
  /** Embedding rows appended (as the mean row) to reach the vocabulary size. */
  paddedRows: number
  /** Tokenizer files copied into the folder. */
  tokenizerFiles: string[]
  /** Guesses to check (e.g. an uninferable `image_token_index`). */
  warnings: string[]
  /** One line describing the result, for logs. */
  summary: string
}

/** What {@link convertVae} wrote. */
export interface VaeReport {
  /** The `.safetensors` file. */
  path: string
  /** Tensors written. */
  tensors: number
  /** Bytes of tensor data. */
  bytes: number
  /** `[codebook entries, embedding width]`. */
  codebook: [number, number]
}

/** @internal */
interface NativeConvertReport extends Omit<ConvertReport, 'dtype' | 'architecture'> {
  dtype: string
  architecture: string
}

/** @internal */
interface NativeVaeReport {
  path: string
  tensors: number
  bytes: number
  codebook: number[]
}

/** The tooling half of the addon; absent from addons built before it existed. @internal */
interface ToolsBinding {
  inspectModel(dir: string): NativeModelSummary
  convertCheckpoint(npz: string, outDir: string, options?: NativeConvertOptions): Promise<NativeConvertReport | NativeFailure>
  convertVae(npz: string, out: string): Promise<NativeVaeReport | NativeFailure>
}

function tools(): ToolsBinding {
  let binding: NativeBinding & Partial<ToolsBinding>
  try {
    binding = native() as NativeBinding & Partial<ToolsBinding>
  } catch (error) {
    throw errorFromThrown(error)
  }
  const { inspectModel, convertCheckpoint, convertVae } = binding
  if (typeof inspectModel !== 'function' || typeof convertCheckpoint !== 'function' || typeof convertVae !== 'function') {
    throw new PaliGemmaError(
      'ERR_MODEL_LOAD',
      'this build of the paligemma native addon has no model tools (inspectModel, convertCheckpoint, convertVae); ' +
        'rebuild it with `npm run build:native` or install a matching paligemma-<platform> package',
    )
  }
  return {
    inspectModel: inspectModel.bind(binding),
    convertCheckpoint: convertCheckpoint.bind(binding),
    convertVae: convertVae.bind(binding),
  }
}

/** Bytes of something, for each precision a model can be loaded in. */
export interface BytesPerDType {
  /** float32: 4 bytes per value. */
  f32: number
  /** bfloat16: 2 bytes per value. */
  bf16: number
  /** float16: 2 bytes per value. */
  f16: number
}

/** The weight files found next to `config.json`. */
export interface CheckpointFiles {
  /** The `.safetensors` files (one, or the shards listed by `model.safetensors.index.json`). */
  weights: string[]
  /** Their total size on disk. */
  bytes: number
  /**
   * Precision of the stored tensors, from the safetensors headers (`'mixed'` when they differ,
   * `undefined` when no weights are present).
   */
  dtype: string | undefined
  /** Whether `tokenizer.json` is present (needed for text prompts and text output). */
  hasTokenizer: boolean
}

/** The vision tower part of a {@link ModelSummary}. */
export interface VisionSummary {
  /** Transformer layers. */
  layers: number
  /** Width of the tower. */
  hiddenSize: number
  /** Width of the MLP. */
  intermediateSize: number
  /** Attention heads. */
  heads: number
  /** Parameters of the tower. */
  parameters: number
}

/** The decoder part of a {@link ModelSummary}. */
export interface TextSummary {
  /** Decoder layers. */
  layers: number
  /** Width of the decoder. */
  hiddenSize: number
  /** Width of the MLP. */
  intermediateSize: number
  /** Query heads. */
  heads: number
  /** Key/value heads (grouped-query attention when fewer than `heads`). */
  kvHeads: number
  /** Width of one head. */
  headDim: number
  /** Rows of the token embedding. */
  vocabSize: number
  /** Most positions one request may use. */
  contextLength: number
  /** Gemma 2's sliding-window span (`undefined` for Gemma). */
  slidingWindow: number | undefined
  /** Layers that attend within the sliding window. */
  slidingLayers: number
  /** Decoder parameters, embedding included. */
  parameters: number
  /** Parameters of the token embedding (shared with the output layer). */
  embeddingParameters: number
}

/** A model described from its `config.json`, without loading its weights. */
export interface ModelSummary {
  /** `'paligemma'` (Gemma decoder) or `'paligemma2'` (Gemma 2 decoder). */
  architecture: 'paligemma' | 'paligemma2'
  /** Side of the square input image, in pixels. */
  imageSize: number
  /** Side of an image patch, in pixels. */
  patchSize: number
  /** Image tokens per prompt, `(imageSize / patchSize)²`. */
  imageTokens: number
  /** Id of the `<image>` token. */
  imageTokenId: number
  /** Id of the `<bos>` token. */
  bosTokenId: number
  /** Ids that end generation. */
  eosTokenIds: number[]
  /** The SigLIP vision tower. */
  vision: VisionSummary
  /** The Gemma / Gemma 2 decoder. */
  text: TextSummary
  /** Parameters of the vision → text projector. */
  projectorParameters: number
  /** All parameters. */
  parameterCount: number
  /** Tensors in a complete checkpoint. */
  tensorCount: number
  /** Memory the weights take when loaded in each precision. */
  weightBytes: BytesPerDType
  /** KV-cache memory per position of one request (keys and values of every layer). */
  kvCacheBytesPerToken: BytesPerDType
  /** The files on disk. */
  files: CheckpointFiles
}

/** Safetensors header dtypes → this package's names. */
const SAFETENSORS_DTYPES: Readonly<Record<string, string>> = { F32: 'f32', BF16: 'bf16', F16: 'f16', F64: 'f64' }

function headerDtypes(path: string, into: Set<string>): void {
  const fd = openSync(path, 'r')
  try {
    const prefix = Buffer.alloc(8)
    if (readSync(fd, prefix, 0, 8, 0) !== 8) return
    const length = Number(prefix.readBigUInt64LE(0))
    if (!Number.isSafeInteger(length) || length <= 0 || length > 100 << 20) return
    const header = Buffer.alloc(length)
    if (readSync(fd, header, 0, length, 8) !== length) return
    const parsed = JSON.parse(header.toString('utf8')) as Record<string, { dtype?: unknown }>
    for (const [name, info] of Object.entries(parsed)) {
      if (name === '__metadata__' || typeof info?.dtype !== 'string') continue
      into.add(SAFETENSORS_DTYPES[info.dtype] ?? info.dtype.toLowerCase())
    }
  } catch {
    // An unreadable header is the loader's problem to report; `info` shows what it can.
  } finally {
    closeSync(fd)
  }
}

function checkpointFiles(dir: string): CheckpointFiles {
  let weights: string[] = []
  const single = join(dir, 'model.safetensors')
  const index = join(dir, 'model.safetensors.index.json')
  if (existsSync(single)) {
    weights = [single]
  } else if (existsSync(index)) {
    try {
      const parsed = JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }
      weights = [...new Set(Object.values(parsed.weight_map ?? {}))].map((file) => join(dir, file)).filter((file) => existsSync(file))
    } catch {
      weights = []
    }
  }
  const dtypes = new Set<string>()
  let bytes = 0
  for (const file of weights) {
    bytes += statSync(file).size
    headerDtypes(file, dtypes)
  }
  const dtype = dtypes.size === 0 ? undefined : dtypes.size === 1 ? [...dtypes][0] : 'mixed'
  return { weights, bytes, dtype, hasTokenizer: existsSync(join(dir, 'tokenizer.json')) }
}

/**
 * Describes the model in `dir` from its `config.json`: sizes, parameter count, and the memory its
 * weights need in each precision. Reads no weights (only the safetensors headers, for their
 * precision).
 *
 * @param dir - a model folder (see {@link PaliGemma.load}).
 * @returns the summary.
 * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD` when `config.json` is missing or invalid, or
 *   the native addon cannot be loaded.
 */
export async function inspectModel(dir: string): Promise<ModelSummary> {
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', 'invalid argument `dir`: must be a non-empty path string')
  }
  let s: NativeModelSummary
  try {
    s = tools().inspectModel(dir)
  } catch (error) {
    throw errorFromThrown(error)
  }
  const perToken = 2 * s.textLayers * s.kvHeads * s.headDim
  return {
    architecture: s.architecture === 'paligemma2' ? 'paligemma2' : 'paligemma',
    imageSize: s.imageSize,
    patchSize: s.patchSize,
    imageTokens: s.imageTokens,
    imageTokenId: s.imageTokenId,
    bosTokenId: s.bosTokenId,
    eosTokenIds: [...s.eosTokenIds],
    vision: {
      layers: s.visionLayers,
      hiddenSize: s.visionHiddenSize,
      intermediateSize: s.visionIntermediateSize,
      heads: s.visionHeads,
      parameters: s.visionParameters,
    },
    text: {
      layers: s.textLayers,
      hiddenSize: s.hiddenSize,
      intermediateSize: s.intermediateSize,
      heads: s.heads,
      kvHeads: s.kvHeads,
      headDim: s.headDim,
      vocabSize: s.vocabSize,
      contextLength: s.contextLength,
      slidingWindow: s.slidingWindow ?? undefined,
      slidingLayers: s.slidingLayers,
      parameters: s.textParameters,
      embeddingParameters: s.embeddingParameters,
    },
    projectorParameters: s.projectorParameters,
    parameterCount: s.parameterCount,
    tensorCount: s.tensorCount,
    weightBytes: { f32: s.parameterCount * 4, bf16: s.parameterCount * 2, f16: s.parameterCount * 2 },
    kvCacheBytesPerToken: { f32: perToken * 4, bf16: perToken * 2, f16: perToken * 2 },
    files: checkpointFiles(dir),
  }
}

/** Options of {@link convertCheckpoint}. */
export interface ConvertCheckpointOptions {
  /** A `config.json` to use instead of inferring one from the array shapes. */
  config?: string
  /** Precision of the written weights. Default: the checkpoint's own. */
  dtype?: 'f32' | 'bf16' | 'f16'
  /** A `tokenizer.json` (or a folder of tokenizer files) to copy into the output folder. */
  tokenizer?: string
  /** Maximum bytes of tensor data per `.safetensors` file (default 4 GiB). */
  shardBytes?: number
}

function checkPath(name: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`${name}\`: must be a non-empty path string`)
  }
  return value
}

/**
 * Converts a big_vision PaliGemma / PaliGemma 2 checkpoint (`.npz`, as Google publishes them)
 * into a folder {@link PaliGemma.load} accepts: `config.json` (given or inferred),
 * `model.safetensors` (or shards with an index) and the tokenizer when given. Streams the
 * arrays, so memory stays far below the checkpoint's size. Runs off the JS thread.
 *
 * @param npz - the checkpoint.
 * @param outDir - the output folder (created if needed).
 * @param options - config override, output precision, tokenizer, shard size.
 * @returns what was written.
 * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD` (unreadable or malformed checkpoint, config
 *   or tokenizer; unwritable output) or `ERR_INVALID_ARGUMENT` (bad options).
 */
export async function convertCheckpoint(npz: string, outDir: string, options: ConvertCheckpointOptions = {}): Promise<ConvertReport> {
  const nativeOptions: NativeConvertOptions = {}
  if (options.config !== undefined) nativeOptions.config = checkPath('config', options.config)
  if (options.tokenizer !== undefined) nativeOptions.tokenizer = checkPath('tokenizer', options.tokenizer)
  if (options.dtype !== undefined) {
    if (options.dtype !== 'f32' && options.dtype !== 'bf16' && options.dtype !== 'f16') {
      throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`dtype\`: must be 'f32', 'bf16' or 'f16'`)
    }
    nativeOptions.dtype = options.dtype
  }
  if (options.shardBytes !== undefined) {
    if (!Number.isSafeInteger(options.shardBytes) || options.shardBytes < 1) {
      throw new PaliGemmaError('ERR_INVALID_ARGUMENT', 'invalid argument `shardBytes`: must be a positive integer')
    }
    nativeOptions.shardBytes = options.shardBytes
  }
  let result: NativeConvertReport | NativeFailure
  try {
    result = await tools().convertCheckpoint(checkPath('npz', npz), checkPath('outDir', outDir), nativeOptions)
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (isFailure(result)) throw errorFromFailure(result)
  return {
    ...result,
    dtype: result.dtype === 'bf16' || result.dtype === 'f16' ? result.dtype : 'f32',
    architecture: result.architecture === 'paligemma2' ? 'paligemma2' : 'paligemma',
  }
}

/**
 * Converts the segmentation VAE checkpoint (`vae-oid.npz`) into one f32 `.safetensors` file, for
 * segmentation. Checks the decoder's layer shapes. Runs off the JS thread.
 *
 * @param npz - the VAE checkpoint.
 * @param out - the `.safetensors` file to write (its folder is created if needed).
 * @returns what was written.
 * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD` when the archive is unreadable or is not the
 *   PaliGemma VAE.
 */
export async function convertVae(npz: string, out: string): Promise<VaeReport> {
  let result: NativeVaeReport | NativeFailure
  try {
    result = await tools().convertVae(checkPath('npz', npz), checkPath('out', out))
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (isFailure(result)) throw errorFromFailure(result)
  return { ...result, codebook: [result.codebook[0] ?? 0, result.codebook[1] ?? 0] }
}
