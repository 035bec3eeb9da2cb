/** Writing prepared folders: weights in the layout the CPU kernels read, loaded in place. */

import { errorFromFailure, errorFromThrown, PaliGemmaError } from '../errors.js'
import { isFailure } from '../native.js'
import type { NativeFailure } from '../native.js'
import { tools } from './binding.js'
import type { NativePrepareReport } from './binding.js'

/** What {@link prepareModel} wrote. */
export interface PrepareReport {
  /** Tensors in the prepared `model.safetensors`. */
  tensors: number
  /** Bytes of that file. */
  bytes: number
  /** The source folder's other files copied along (config, tokenizer, processor settings). */
  filesCopied: string[]
}

/** Options of {@link prepareModel}. */
export interface PrepareOptions {
  /**
   * Weight format of the prepared folder, and the `dtype` to load it with. `'f32'`: the
   * panel-major matrices, mapped in place. `'q8_0'`, `'q4k'`: the text decoder's matrices and
   * LM head as quantized blocks (no quantization at load), the rest f32. Default `'f32'`.
   */
  dtype?: 'f32' | 'q8_0' | 'q4k'
}

/**
 * Writes a prepared folder of a Hugging Face model folder: its weights in the layout the CPU
 * kernels read (panel-major f32, or quantized blocks), which `PaliGemma.load` then uses without
 * converting them (PaliGemma-3B in f32: about 2 s instead of 6–24). Load it on the CPU with the
 * same `dtype`; its outputs are bitwise those of the original folder loaded with it. `outDir`
 * must not exist or be empty. See docs/prepared.md.
 *
 * @throws {PaliGemmaError} `ERR_INVALID_ARGUMENT` for a bad path, dtype or non-empty `outDir`,
 *   `ERR_MODEL_LOAD` when the source does not load.
 */
export async function prepareModel(modelDir: string, outDir: string, options: PrepareOptions = {}): Promise<PrepareReport> {
  for (const [name, value] of [['modelDir', modelDir], ['outDir', outDir]] as const) {
    if (typeof value !== 'string' || value.length === 0) {
      throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`${name}\`: must be a non-empty path string`)
    }
  }
  const dtype = options.dtype ?? 'f32'
  if (dtype !== 'f32' && dtype !== 'q8_0' && dtype !== 'q4k') {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', "invalid argument `dtype`: must be 'f32', 'q8_0' or 'q4k'")
  }
  let result: NativePrepareReport | NativeFailure
  try {
    result = await tools().prepareModel(modelDir, outDir, dtype)
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (isFailure(result)) throw errorFromFailure(result)
  return { tensors: result.tensors, bytes: result.bytes, filesCopied: result.filesCopied }
}
