/** Converting Google's big_vision `.npz` checkpoints (model and segmentation VAE). */

import { errorFromFailure, errorFromThrown, PaliGemmaError } from '../errors.js'
import { isFailure } from '../native.js'
import type { NativeFailure } from '../native.js'
import { tools } from './binding.js'
import type { NativeConvertOptions, NativeConvertReport, NativeVaeReport } from './binding.js'

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
