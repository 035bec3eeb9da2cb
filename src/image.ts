/**
 * Images into the native engine: validation of image inputs, `preprocessImage`, mask decoding,
 * and the `{ image, prompt }` generation request.
 *
 * @packageDocumentation
 */

import { statSync } from 'node:fs'

import { PaliGemmaError, errorFromFailure, errorFromThrown } from './errors.js'
import { isFailure, native } from './native.js'
import type { NativeCancelToken, NativeEvent, NativeFailure, NativeGenerateOutput, NativeGenerateRequest, NativeModel, NativeModelInfo } from './native.js'
import { SAMPLING_KEYS, argumentError, checkKeys, describe, integer, invalid, isRecord, optionalSignal, validateSampling } from './options.js'
import { parseSegmentations } from './parse.js'
import { TokenStream } from './stream.js'
import type { ImageInput, ImageOptions, ImageSize, PreprocessedImage, Segmentation } from './types.js'

/** The default `maxPixels`: 100 megapixels. */
export const DEFAULT_MAX_PIXELS = 100_000_000

/** Largest `size` of `preprocessImage` (3 · 4096² floats = 192 MiB). */
const MAX_SIZE = 4096

/** An image as the addon takes it (see crates/paligemma-node/src/processor.rs). @internal */
export interface NativeImageInput {
  kind: 'path' | 'encoded' | 'raw'
  path?: string
  data?: Uint8Array
  width?: number
  height?: number
  channels?: number
}

/** @internal */
export interface NativeDecodeOptions {
  maxPixels: number
  applyExifOrientation: boolean
}

/** @internal */
export interface NativeAnnotation {
  label: string
  x1: number
  y1: number
  x2: number
  y2: number
  mask?: Uint8Array
}

interface NativePreprocessed {
  pixelValues: Float32Array
  width: number
  height: number
}

interface NativeImagePromptRequest extends Omit<NativeGenerateRequest, 'inputIds' | 'pixelValues' | 'maxNewTokens'> {
  image: NativeImageInput
  decode: NativeDecodeOptions
  prompt: string
  maxNewTokens?: number
}

/** The `done` output of an `{ image, prompt }` generation carries the prompt and the image size. */
interface NativeImageEvent extends NativeEvent {
  output?: NativeGenerateOutput & { promptIds?: number[]; imageWidth?: number; imageHeight?: number }
}

/** The addon's image functions (not in `NativeBinding`, which describes the model API). @internal */
export interface ProcessorBinding {
  preprocessImage(image: NativeImageInput, size: number, options: NativeDecodeOptions): Promise<NativePreprocessed | NativeFailure>
  decodeMasks(
    vaePath: string,
    segIndices: Uint32Array,
    boxes: number[],
    width: number,
    height: number,
    maxPixels: number,
  ): Promise<Uint8Array[] | NativeFailure>
  renderAnnotations(image: NativeImageInput, options: NativeDecodeOptions, items: NativeAnnotation[]): Promise<Buffer | NativeFailure>
}

function outdatedAddon(what: string): PaliGemmaError {
  return new PaliGemmaError(
    'ERR_MODEL_LOAD',
    `the loaded native addon has no ${what}: it is older than this package; rebuild it (npm run build:native) or reinstall`,
  )
}

function hasProcessor(binding: object): binding is ProcessorBinding {
  return (
    'preprocessImage' in binding &&
    typeof binding.preprocessImage === 'function' &&
    'decodeMasks' in binding &&
    typeof binding.decodeMasks === 'function' &&
    'renderAnnotations' in binding &&
    typeof binding.renderAnnotations === 'function'
  )
}

/** The addon's image functions, loading the addon on first use. @internal */
export function processor(): ProcessorBinding {
  let binding: object
  try {
    binding = native()
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (!hasProcessor(binding)) throw outdatedAddon('image functions')
  return binding
}

/** Awaits a native call that resolves with a value or a failure. @internal */
export async function settle<T>(call: () => Promise<T | NativeFailure>): Promise<T> {
  let out: T | NativeFailure
  try {
    out = await call()
  } catch (error) {
    throw errorFromThrown(error)
  }
  if (isFailure(out)) throw errorFromFailure(out)
  return out
}

/**
 * Checks an {@link ImageInput} and wraps it for the addon (no pixel data is copied here).
 *
 * @internal
 */
export function nativeImage(value: unknown, name = 'image'): NativeImageInput {
  if (typeof value === 'string') {
    if (value.length === 0) throw invalid(name, 'is an empty path')
    return { kind: 'path', path: value }
  }
  if (value instanceof Uint8Array) return { kind: 'encoded', data: value }
  if (isRecord(value) && 'data' in value) {
    const { data } = value
    if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray)) {
      throw invalid(`${name}.data`, `must be a Uint8Array or Uint8ClampedArray of pixels, got ${describe(data)}`)
    }
    return {
      kind: 'raw',
      data: data instanceof Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      width: integer(`${name}.width`, value.width, 0, 2 ** 32 - 1),
      height: integer(`${name}.height`, value.height, 0, 2 ** 32 - 1),
      // 1, 3 or 4; other counts are refused natively as ERR_INVALID_IMAGE.
      channels: integer(`${name}.channels`, value.channels, 0, 255),
    }
  }
  throw invalid(
    name,
    `must be a file path, a Uint8Array/Buffer holding an encoded image, or raw pixels { data, width, height, channels }, got ${describe(value)}`,
  )
}

const IMAGE_OPTION_KEYS = ['applyExifOrientation', 'maxPixels'] as const

/** Decoding options from any options object that may hold them. @internal */
export function decodeOptions(options: Record<string, unknown>): NativeDecodeOptions {
  const exif = options.applyExifOrientation ?? false
  if (typeof exif !== 'boolean') throw invalid('applyExifOrientation', `must be a boolean, got ${describe(exif)}`)
  const maxPixels =
    options.maxPixels === undefined ? DEFAULT_MAX_PIXELS : integer('maxPixels', options.maxPixels, 1, Number.MAX_SAFE_INTEGER)
  return { maxPixels, applyExifOrientation: exif }
}

/** Validates an optional {@link ImageOptions} argument. @internal */
export function imageOptions(options: unknown, extraKeys: readonly string[] = []): Record<string, unknown> {
  if (options === undefined) return {}
  if (!isRecord(options)) throw invalid('options', `must be an object, got ${describe(options)}`)
  checkKeys('options', options, [...IMAGE_OPTION_KEYS, ...extraKeys])
  return options
}

/**
 * Decodes an image and turns it into the model's input: RGB (Pillow's `convert('RGB')`), resized
 * to `size × size` with Pillow's bicubic filter (bit-exact, no aspect preservation, no crop, as
 * the reference `SiglipImageProcessor` does), scaled to [−1, 1], channel-major. Runs off the JS
 * thread. Feed the result to `generate({ inputIds, pixelValues })` or `forward`.
 *
 * @param image - a path, encoded bytes (JPEG, PNG, WebP, GIF first frame, BMP) or raw pixels.
 * @param size - the model's `info.imageSize` (224, 448 or 896 for released checkpoints), 1…4096.
 * @param options - EXIF orientation and the pixel limit.
 * @returns the pixel values and the original image's width and height.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_IMAGE` (unreadable, truncated, corrupt or
 *   unsupported file, zero-sized image, raw data of the wrong length, more than `maxPixels`
 *   pixels), `ERR_INVALID_ARGUMENT` (bad arguments).
 */
export async function preprocessImage(image: ImageInput, size: number, options?: ImageOptions): Promise<PreprocessedImage> {
  let input: NativeImageInput, side: number, decode: NativeDecodeOptions
  try {
    input = nativeImage(image)
    side = integer('size', size, 1, MAX_SIZE)
    decode = decodeOptions(imageOptions(options))
  } catch (error) {
    throw argumentError(error)
  }
  const binding = processor()
  const out = await settle(() => binding.preprocessImage(input, side, decode))
  return { pixelValues: out.pixelValues, width: out.width, height: out.height }
}

const VAE_HINT =
  "the mask decoder weights are big_vision's vae-oid.npz (gs://big_vision/paligemma/vae-oid.npz, also in the " +
  'Hugging Face Space big-vision/paligemma-hf) converted to safetensors: npx paligemma convert-vae vae-oid.npz vae-oid.safetensors'

/**
 * The mask decoder's path, required; with `checkFile`, also that it is a file (so `segment()`
 * fails before spending time on generation).
 *
 * @internal
 */
export function requireVaePath(value: unknown, checkFile: boolean): string {
  if (value === undefined) {
    throw invalid('vaePath', `is required to decode masks (a segment option or a PaliGemma.load option); ${VAE_HINT}`)
  }
  if (typeof value !== 'string' || value.length === 0) throw invalid('vaePath', `must be a non-empty path string, got ${describe(value)}`)
  if (checkFile && !statSync(value, { throwIfNoEntry: false })?.isFile()) {
    throw invalid('vaePath', `no file at ${value}; ${VAE_HINT}`)
  }
  return value
}

/** Options of {@link decodeSegmentations}. */
export interface DecodeSegmentationsOptions extends ImageSize {
  /** The converted mask decoder weights (`vae-oid.safetensors`). */
  vaePath: string
  /** Largest accepted `width × height` of the masks. Default 100 000 000. */
  maxPixels?: number
}

/**
 * Parses segmentation output and decodes every object's mask: the sixteen `<seg###>` codes go
 * through the VQ-VAE decoder (natively, off the JS thread) to a 64×64 mask, which is resized to
 * the object's box with Pillow's bicubic filter, thresholded at half, and pasted into a
 * `width × height` mask — the official demo's reconstruction. Objects without valid mask tokens
 * get `mask: null`. This is what `PaliGemma.segment` does after generating.
 *
 * @param text - the generated text.
 * @param options - the original image's `width` and `height`, and `vaePath`.
 * @returns the objects in output order.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` (missing or unreadable `vaePath`, bad
 *   size), `ERR_MODEL_LOAD` (a file that is not a mask decoder).
 */
export async function decodeSegmentations(text: string, options: DecodeSegmentationsOptions): Promise<Segmentation[]> {
  if (!isRecord(options)) throw invalid('options', `must be { width, height, vaePath }, got ${describe(options)}`)
  checkKeys('options', options, ['width', 'height', 'vaePath', 'maxPixels'])
  const parsed = parseSegmentations(text, options)
  const { width, height } = options
  const vaePath = requireVaePath(options.vaePath, false)
  const { maxPixels } = decodeOptions({ maxPixels: options.maxPixels })
  const withCodes = parsed.filter((p) => p.segIndices !== null)
  if (withCodes.length === 0) return parsed.map((p) => ({ ...p, mask: null }))
  const codes = new Uint32Array(withCodes.flatMap((p) => p.segIndices ?? []))
  const boxes = withCodes.flatMap(({ box }) => [box.x, box.y, box.x + box.width, box.y + box.height])
  const binding = processor()
  const masks = await settle(() => binding.decodeMasks(vaePath, codes, boxes, width, height, maxPixels))
  let next = 0
  return parsed.map((p) => {
    if (p.segIndices === null) return { ...p, mask: null }
    const data = masks[next++]
    if (!data) throw new PaliGemmaError('ERR_INTERNAL', `internal error: the mask decoder returned ${masks.length} masks for ${withCodes.length} objects`)
    return { ...p, mask: { width, height, data } }
  })
}

// ---------------------------------------------------------------------------------------------
// { image, prompt } requests

const IMAGE_REQUEST_KEYS = ['image', 'prompt', ...IMAGE_OPTION_KEYS, ...SAMPLING_KEYS] as const

/** Whether a generation request is the `{ image, prompt }` kind. @internal */
export function isImageRequest(request: unknown): boolean {
  return isRecord(request) && ('image' in request || 'prompt' in request)
}

function validateImageRequest(request: unknown, info: NativeModelInfo): { native: NativeImagePromptRequest; signal?: AbortSignal } {
  if (!isRecord(request)) throw invalid('request', `must be an object { image, prompt, ...options }, got ${describe(request)}`)
  if ('inputIds' in request || 'pixelValues' in request) {
    throw invalid('request', 'pass either { inputIds, pixelValues } or { image, prompt }, not both')
  }
  checkKeys('request', request, IMAGE_REQUEST_KEYS)
  const { prompt } = request
  if (typeof prompt !== 'string') throw invalid('prompt', `must be a string (e.g. 'caption en'), got ${describe(prompt)}`)
  if (!info.hasTokenizer) {
    throw invalid(
      'prompt',
      "an { image, prompt } request needs the model's tokenizer, and the model folder has no tokenizer.json; " +
        'add it (PaliGemma checkpoints ship one) or pass { inputIds, pixelValues }',
    )
  }
  const maxNewTokens = request.maxNewTokens === undefined ? undefined : integer('maxNewTokens', request.maxNewTokens, 1, 2 ** 31 - 1)
  const native: NativeImagePromptRequest = {
    image: nativeImage(request.image),
    decode: decodeOptions(request),
    prompt,
    ...validateSampling(request, info),
  }
  if (maxNewTokens !== undefined) native.maxNewTokens = maxNewTokens
  return { native, signal: optionalSignal('signal', request.signal) }
}

type ImageModel = NativeModel & {
  generateFromImage(request: NativeImagePromptRequest, cancel: NativeCancelToken, onEvent: (event: NativeImageEvent) => void): void
}

function canGenerateFromImage(model: NativeModel): model is ImageModel {
  return 'generateFromImage' in model && typeof model.generateFromImage === 'function'
}

function noop(): void {}

/**
 * Starts an `{ image, prompt }` generation on the model's queue.
 *
 * @param live - the native model (throws if disposed).
 * @param newToken - a fresh cancel token.
 * @internal
 */
export function startImageRequest(
  live: () => NativeModel,
  newToken: () => NativeCancelToken,
  info: NativeModelInfo,
  request: unknown,
  buffer: boolean,
): TokenStream {
  let model: ImageModel
  let validated: ReturnType<typeof validateImageRequest>
  try {
    const candidate = live()
    validated = validateImageRequest(request, info)
    if (!canGenerateFromImage(candidate)) throw outdatedAddon('{ image, prompt } generation')
    model = candidate
  } catch (error) {
    return new TokenStream({ error: argumentError(error, 'request'), seed: 0, buffer })
  }
  const { native: nativeRequest, signal } = validated
  let extra: { promptIds: number[]; image: ImageSize } | undefined
  const stream = new TokenStream({
    seed: nativeRequest.seed,
    signal,
    buffer,
    token: newToken(),
    run: (token, onEvent) =>
      model.generateFromImage(nativeRequest, token, (event) => {
        const out = event.output
        if (out?.promptIds && out.imageWidth !== undefined && out.imageHeight !== undefined) {
          extra = { promptIds: out.promptIds, image: { width: out.imageWidth, height: out.imageHeight } }
        }
        onEvent(event)
      }),
  })
  // The `done` event passes the wrapper above before the stream resolves `result`, and this
  // reaction is registered before anyone else can see the stream; reactions run in registration
  // order, so every consumer of `result` sees the prompt ids and image size.
  stream.result.then((result) => {
    if (extra) Object.assign(result, extra)
  }, noop)
  return stream
}
