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
export { downloadModel, hubCacheDir, isHubModelId, resolveModel } from './src/hub.js'
export type { DownloadProgress, ResolveModelOptions } from './src/hub.js'
export { convertCheckpoint, convertVae, inspectModel, prepareModel } from './src/tools.js'
export type {
  BytesPerDType,
  CheckpointFiles,
  ConvertCheckpointOptions,
  ConvertReport,
  ModelSummary,
  PrepareOptions,
  PrepareReport,
  TextSummary,
  VaeReport,
  VisionSummary,
} from './src/tools.js'
export type { ErrorCode } from './src/errors.js'
export { decodeSegmentations, preprocessImage } from './src/image.js'
export type { DecodeSegmentationsOptions } from './src/image.js'
export { parseDetections, parseSegmentations } from './src/parse.js'
export { drawDetections, drawMasks } from './src/render.js'
export { maskToRle, rleToMask, segmentationsToRle } from './src/rle.js'
export type { RleMask, RleSegmentation } from './src/rle.js'
export type { LabeledBox, MaskedDetection } from './src/render.js'
export { taskPrompt } from './src/tasks.js'
export { TASK_NAMES, taskResultJson, taskSpecPrompt } from './src/batch/task.js'
export type { TaskName, TaskResult, TaskResultJson, TaskSpec } from './src/batch/task.js'
export type { BatchInput, BatchItem, BatchOptions, BatchResult } from './src/batch/batch.js'
export { serve } from './src/serve/server.js'
export type { RunningServer, ServeOptions } from './src/serve/server.js'
export type { LanguageTaskOptions, SegmentOptions, TaskOptions } from './src/tasks.js'
export type {
  BoundingBox,
  Detection,
  ImageInput,
  ImageOptions,
  ImageRequest,
  ImageSize,
  Mask,
  ParsedSegmentation,
  PreprocessedImage,
  RawImage,
  Segmentation,
} from './src/types.js'
export type {
  DType,
  DeviceKind,
  FinishReason,
  ForwardInput,
  ForwardOutput,
  GenerateRequest,
  GenerateResult,
  LoadOptions,
  LoadPhase,
  LoadProgress,
  ModelInfo,
  SamplingOptions,
  StreamChunk,
  Timings,
  TokenizedRequest,
} from './src/types.js'
