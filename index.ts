/**
 * PaliGemma and PaliGemma 2 vision-language models for Node.js, on a native Rust engine.
 *
 * ```ts
 * import { PaliGemma } from 'paligemma'
 * const model = await PaliGemma.load('/models/paligemma2-3b-pt-224')
 * for await (const chunk of model.stream({ inputIds, pixelValues, maxNewTokens: 32 })) {
 *   process.stdout.write(chunk.text)
 * }
 * await model.dispose()
 * ```
 *
 * @packageDocumentation
 */

export { PaliGemma } from './src/model.js'
export { TokenStream } from './src/stream.js'
export { AbortError, PaliGemmaError, isErrorCode } from './src/errors.js'
export type { ErrorCode } from './src/errors.js'
export type {
  DType,
  DeviceKind,
  FinishReason,
  ForwardInput,
  ForwardOutput,
  GenerateRequest,
  GenerateResult,
  LoadOptions,
  LoadProgress,
  ModelInfo,
  SamplingOptions,
  StreamChunk,
  Timings,
  TokenizedRequest,
} from './src/types.js'
