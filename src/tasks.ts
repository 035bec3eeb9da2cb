/**
 * PaliGemma's task prompts (spec §3.4) and the task helpers behind `PaliGemma.caption`, `ask`,
 * `ocr`, `detect` and `segment`.
 *
 * @packageDocumentation
 */

import { PaliGemmaError } from './errors.js'
import { decodeSegmentations, requireVaePath } from './image.js'
import { describe, invalid, isRecord } from './options.js'
import { parseDetections } from './parse.js'
import type { Detection, GenerateResult, ImageInput, ImageOptions, ImageRequest, ImageSize, SamplingOptions, Segmentation } from './types.js'

/** Sampling and image options, accepted by every task helper. */
export interface TaskOptions extends SamplingOptions, ImageOptions {}

/** Options of `caption` and `ask`. */
export interface LanguageTaskOptions extends TaskOptions {
  /** Language code of the answer, e.g. `'en'`, `'de'`, `'zh'`. Default `'en'`. */
  lang?: string
}

/** Options of `segment`. */
export interface SegmentOptions extends TaskOptions {
  /**
   * The mask decoder weights: big_vision's `vae-oid.npz` converted with
   * `npx paligemma convert-vae vae-oid.npz vae-oid.safetensors`. Default: the `vaePath` given to
   * `PaliGemma.load`.
   */
  vaePath?: string
}

function lang(value: unknown): string {
  if (value === undefined) return 'en'
  if (typeof value !== 'string' || !/^\S+$/.test(value)) {
    throw invalid('lang', `must be a language code without spaces, e.g. 'en', got ${describe(value)}`)
  }
  return value
}

function text(name: string, value: unknown): string {
  if (typeof value !== 'string' || value.trim().length === 0) throw invalid(name, `must be a non-empty string, got ${describe(value)}`)
  return value
}

/** Labels as a list: a string may hold several separated by `;`. */
function labelList(value: unknown): string[] {
  const raw: unknown[] = typeof value === 'string' ? value.split(';') : Array.isArray(value) ? value : [value]
  const labels = Array.from(raw, (label, i) => {
    if (typeof label !== 'string' || label.trim().length === 0) {
      throw invalid('labels', `entry ${i} must be a non-empty string, got ${describe(label)}`)
    }
    if (/[;\n]/.test(label)) throw invalid('labels', `entry ${i} (${JSON.stringify(label)}) contains ';' or a line break, which separate prompts`)
    return label.trim()
  })
  if (labels.length === 0) throw invalid('labels', 'needs at least one label')
  return labels
}

/**
 * Builders of PaliGemma's task prompts, for `generate({ image, prompt })` when you want the full
 * result (token ids, finish reason, timings) rather than a task helper's parsed output. The
 * trailing `"\n"` is added by the engine, not here.
 *
 * @example
 * ```ts
 * const result = await model.generate({ image: 'cat.jpg', prompt: taskPrompt.detect(['cat', 'dog']) })
 * const boxes = parseDetections(result.text, result.image!)
 * ```
 */
export const taskPrompt = {
  /** `caption <lang>`: a short caption. */
  caption: (language?: string): string => `caption ${lang(language)}`,
  /** `describe <lang>`: a longer description. */
  describe: (language?: string): string => `describe ${lang(language)}`,
  /** `answer <lang> <question>`: visual question answering. */
  answer: (question: string, language?: string): string => `answer ${lang(language)} ${text('question', question)}`,
  /** `ocr`: the text in the image. */
  ocr: (): string => 'ocr',
  /** `detect a ; b`: boxes of the named objects (a string may list several, separated by `;`). */
  detect: (labels: string | readonly string[]): string => `detect ${labelList(labels).join(' ; ')}`,
  /** `segment a ; b`: boxes and masks of the named objects. */
  segment: (labels: string | readonly string[]): string => `segment ${labelList(labels).join(' ; ')}`,
} as const

/** Runs one `{ image, prompt }` request (the model's `generate`). @internal */
export type RunRequest = (request: ImageRequest) => Promise<GenerateResult>

/** Splits the task-only keys off an options object. */
function split(options: unknown, keys: readonly string[]): { own: Record<string, unknown>; rest: TaskOptions } {
  if (options === undefined) return { own: {}, rest: {} }
  if (!isRecord(options)) throw invalid('options', `must be an object, got ${describe(options)}`)
  const own: Record<string, unknown> = {}
  const rest: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(options)) (keys.includes(key) ? own : rest)[key] = value
  // The generation validates the remaining keys and reports unknown ones.
  return { own, rest }
}

/** The original image's size a `{ image, prompt }` generation reports. @internal */
export function sizeOf(result: GenerateResult): ImageSize {
  if (!result.image) throw new PaliGemmaError('ERR_INTERNAL', 'internal error: the generation did not report the image size')
  return result.image
}

/** @internal */
export async function runCaption(run: RunRequest, image: ImageInput, options?: LanguageTaskOptions): Promise<string> {
  const { own, rest } = split(options, ['lang'])
  return (await run({ ...rest, image, prompt: taskPrompt.caption(lang(own.lang)) })).text
}

/** @internal */
export async function runAsk(run: RunRequest, image: ImageInput, question: string, options?: LanguageTaskOptions): Promise<string> {
  const { own, rest } = split(options, ['lang'])
  return (await run({ ...rest, image, prompt: taskPrompt.answer(question, lang(own.lang)) })).text
}

/** @internal */
export async function runOcr(run: RunRequest, image: ImageInput, options?: TaskOptions): Promise<string> {
  const { rest } = split(options, [])
  return (await run({ ...rest, image, prompt: taskPrompt.ocr() })).text
}

/** @internal */
export async function runDetect(
  run: RunRequest,
  image: ImageInput,
  labels: string | readonly string[],
  options?: TaskOptions,
): Promise<Detection[]> {
  const { rest } = split(options, [])
  const result = await run({ ...rest, image, prompt: taskPrompt.detect(labels) })
  return parseDetections(result.text, sizeOf(result))
}

/** @internal */
export async function runSegment(
  run: RunRequest,
  image: ImageInput,
  labels: string | readonly string[],
  options: SegmentOptions | undefined,
  defaultVaePath: string | undefined,
): Promise<Segmentation[]> {
  const { own, rest } = split(options, ['vaePath'])
  // Checked before generating, so a missing file does not cost a whole generation.
  const vaePath = requireVaePath(own.vaePath ?? defaultVaePath, true)
  const result = await run({ ...rest, image, prompt: taskPrompt.segment(labels) })
  return segmentationsOf(result, vaePath, rest.maxPixels)
}

/** The masks of a segment generation, at the image's size (within `maxPixels`). @internal */
export function segmentationsOf(result: GenerateResult, vaePath: string, maxPixels: number | undefined): Promise<Segmentation[]> {
  const decode: { width: number; height: number; vaePath: string; maxPixels?: number } = { ...sizeOf(result), vaePath }
  if (maxPixels !== undefined) decode.maxPixels = maxPixels
  return decodeSegmentations(result.text, decode)
}
