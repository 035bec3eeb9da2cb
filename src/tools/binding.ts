/**
 * The native half of the model tools: their raw result shapes, and the check that the loaded
 * addon has them.
 */

import { errorFromThrown, PaliGemmaError } from '../errors.js'
import { native } from '../native.js'
import type { NativeBinding, NativeFailure } from '../native.js'
import type { ConvertReport } from './convert.js'

/** @internal */
export interface NativeModelSummary {
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
export interface NativeConvertOptions {
  config?: string
  dtype?: string
  tokenizer?: string
  shardBytes?: number
}

/** @internal */
export interface NativeConvertReport extends Omit<ConvertReport, 'dtype' | 'architecture'> {
  dtype: string
  architecture: string
}

/** @internal */
export interface NativeVaeReport {
  path: string
  tensors: number
  bytes: number
  codebook: number[]
}

/** @internal */
export interface NativePrepareReport {
  tensors: number
  bytes: number
  filesCopied: string[]
}

/** The tooling half of the addon; absent from addons built before it existed. @internal */
interface ToolsBinding {
  inspectModel(dir: string): NativeModelSummary
  convertCheckpoint(npz: string, outDir: string, options?: NativeConvertOptions): Promise<NativeConvertReport | NativeFailure>
  convertVae(npz: string, out: string): Promise<NativeVaeReport | NativeFailure>
  prepareModel(source: string, outDir: string, dtype: string): Promise<NativePrepareReport | NativeFailure>
}

/** @internal */
export function tools(): ToolsBinding {
  let binding: NativeBinding & Partial<ToolsBinding>
  try {
    binding = native() as NativeBinding & Partial<ToolsBinding>
  } catch (error) {
    throw errorFromThrown(error)
  }
  const { inspectModel, convertCheckpoint, convertVae, prepareModel } = binding
  if (typeof inspectModel !== 'function' || typeof convertCheckpoint !== 'function' || typeof convertVae !== 'function' || typeof prepareModel !== 'function') {
    throw new PaliGemmaError(
      'ERR_MODEL_LOAD',
      'this build of the paligemma native addon has no model tools (inspectModel, convertCheckpoint, convertVae, prepareModel); ' +
        'rebuild it with `npm run build:native` or install a matching paligemma-<platform> package',
    )
  }
  return {
    inspectModel: inspectModel.bind(binding),
    convertCheckpoint: convertCheckpoint.bind(binding),
    convertVae: convertVae.bind(binding),
    prepareModel: prepareModel.bind(binding),
  }
}
