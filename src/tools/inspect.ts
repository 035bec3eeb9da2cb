/** Describing a checkpoint from its `config.json` and safetensors headers, without loading it. */

import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs'
import { join } from 'node:path'

import { errorFromThrown, PaliGemmaError } from '../errors.js'
import { tools } from './binding.js'
import type { NativeModelSummary } from './binding.js'

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

/**
 * Whether `path` is a regular file (or a link to one). Opening a FIFO for reading would block
 * the JS thread until a writer comes, so nothing else is opened.
 */
function isRegularFile(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isFile() ?? false
}

function checkpointFiles(dir: string): CheckpointFiles {
  let weights: string[] = []
  const single = join(dir, 'model.safetensors')
  const index = join(dir, 'model.safetensors.index.json')
  if (isRegularFile(single)) {
    weights = [single]
  } else if (isRegularFile(index)) {
    try {
      const parsed = JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }
      weights = [...new Set(Object.values(parsed.weight_map ?? {}))].map((file) => join(dir, file)).filter(isRegularFile)
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
