/**
 * Model tooling: describe a checkpoint without loading it, and convert Google's big_vision
 * `.npz` checkpoints (and the segmentation VAE) into the Hugging Face layout.
 *
 * @packageDocumentation
 */


export { inspectModel } from './tools/inspect.js'
export type { BytesPerDType, CheckpointFiles, ModelSummary, TextSummary, VisionSummary } from './tools/inspect.js'
export { convertCheckpoint, convertVae } from './tools/convert.js'
export { prepareModel } from './tools/prepare.js'
export type { PrepareOptions, PrepareReport } from './tools/prepare.js'
export type { ConvertCheckpointOptions, ConvertReport, VaeReport } from './tools/convert.js'
