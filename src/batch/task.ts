/**
 * One task on one image, described as data: what `model.batch`, `paligemma batch` and queue
 * workers run for each image. `{ task: 'detect', labels: ['cat'] }` becomes the prompt
 * `detect cat`; the result carries the parsed boxes or masks next to the text.
 *
 * @packageDocumentation
 */

import { PaliGemmaError } from '../errors.js'
import { requireVaePath } from '../image.js'
import { describe, invalid, isRecord } from '../options.js'
import { parseDetections } from '../parse.js'
import { segmentationsToRle } from '../rle.js'
import type { RleSegmentation } from '../rle.js'
import type { TokenStream } from '../stream.js'
import { segmentationsOf, sizeOf, taskPrompt } from '../tasks.js'
import type { SegmentOptions } from '../tasks.js'
import type { Detection, FinishReason, GenerateResult, ImageInput, ImageRequest, ImageSize, Segmentation, Timings } from '../types.js'

/** The tasks a batch or a job may name. */
export const TASK_NAMES = ['caption', 'ask', 'ocr', 'detect', 'segment', 'generate'] as const

/** A task's name: `caption`, `ask`, `ocr`, `detect`, `segment` or `generate` (any prompt). */
export type TaskName = (typeof TASK_NAMES)[number]

/** Which task to run, and its words. */
export interface TaskSpec {
  /** Default `'caption'`. */
  task?: TaskName
  /** `generate`: the whole prompt, verbatim. */
  prompt?: string
  /** `ask`: the question. */
  question?: string
  /** `detect` and `segment`: `'cat'`, `'cat ; dog'` or `['cat', 'dog']`. */
  labels?: string | readonly string[]
  /** `caption` and `ask`: the answer's language. Default `'en'`. */
  lang?: string
}

/** The fields of a {@link TaskSpec}. */
export const TASK_SPEC_KEYS = ['task', 'prompt', 'question', 'labels', 'lang'] as const

/** A generation's result plus what its task parses out of the text. */
export interface TaskResult extends GenerateResult {
  /** `detect`: the boxes, in the image's pixels. */
  detections?: Detection[]
  /** `segment`: boxes and masks at the image's size. */
  segmentations?: Segmentation[]
}

/** A {@link TaskResult} as JSON: masks as COCO RLE. This is a queue job's return value. */
export interface TaskResultJson {
  /** The generated text. */
  text: string
  /** The generated token ids. */
  tokenIds: number[]
  /** Why generation ended. */
  finishReason: FinishReason
  /** `detect` only. */
  detections?: Detection[]
  /** `segment` only; masks as COCO RLE (`rleToMask` decodes them). */
  segmentations?: RleSegmentation[]
  /** Durations and counts. */
  timings: Timings
  /** The image's size before resizing. */
  image?: ImageSize
}

/**
 * The prompt a task spec stands for, checking that it names a task and has the words that task
 * needs (and no others).
 *
 * @param spec - the task and its words.
 * @returns the prompt, e.g. `detect cat ; dog`.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` naming the bad field.
 */
export function taskSpecPrompt(spec: TaskSpec): string {
  const task = spec.task ?? 'caption'
  const allowed: Record<TaskName, readonly (keyof TaskSpec)[]> = {
    caption: ['lang'],
    ask: ['question', 'lang'],
    ocr: [],
    detect: ['labels'],
    segment: ['labels'],
    generate: ['prompt'],
  }
  if (!(TASK_NAMES as readonly unknown[]).includes(task)) throw invalid('task', `must be one of ${TASK_NAMES.join(', ')}, got ${describe(task)}`)
  for (const key of ['prompt', 'question', 'labels', 'lang'] as const) {
    if (spec[key] !== undefined && !allowed[task].includes(key)) throw invalid(key, `does not apply to the ${task} task (it takes ${allowed[task].join(', ') || 'no words'})`)
  }
  switch (task) {
    case 'caption':
      return taskPrompt.caption(spec.lang)
    case 'ask':
      if (spec.question === undefined) throw invalid('question', 'is required by the ask task')
      return taskPrompt.answer(spec.question, spec.lang)
    case 'ocr':
      return taskPrompt.ocr()
    case 'detect':
    case 'segment':
      if (spec.labels === undefined) throw invalid('labels', `are required by the ${task} task`)
      return taskPrompt[task](spec.labels)
    case 'generate':
      if (typeof spec.prompt !== 'string' || spec.prompt.trim().length === 0) throw invalid('prompt', `must be a non-empty string for the generate task, got ${describe(spec.prompt)}`)
      return spec.prompt
  }
}

/** Reads a task spec out of `value` (a batch item or job data), leaving the other keys alone. */
export function pickTaskSpec(value: Record<string, unknown>): TaskSpec {
  const spec: Record<string, unknown> = {}
  for (const key of TASK_SPEC_KEYS) if (value[key] !== undefined) spec[key] = value[key]
  return spec as TaskSpec
}

/** How {@link runTask} reaches the model. @internal */
export interface TaskRunner {
  /** The model's `stream`. */
  stream(request: ImageRequest): TokenStream
  /** The mask decoder when the options name none (the `vaePath` load option). */
  defaultVaePath: string | undefined
}

/**
 * Runs one task on one image and parses its result.
 *
 * @param runner - the model.
 * @param image - the image.
 * @param spec - the task.
 * @param options - sampling, image decoding, `vaePath` and `signal`.
 * @param onChunk - called with the number of tokens so far, as they come.
 * @internal
 */
export async function runTask(
  runner: TaskRunner,
  image: ImageInput,
  spec: TaskSpec,
  options: SegmentOptions = {},
  onChunk?: (tokens: number) => void,
): Promise<TaskResult> {
  if (!isRecord(options as unknown)) throw invalid('options', `must be an object, got ${describe(options)}`)
  const prompt = taskSpecPrompt(spec)
  const { vaePath: ownVae, ...rest } = options
  const vaePath = spec.task === 'segment' ? requireVaePath(ownVae ?? runner.defaultVaePath, true) : undefined
  if (ownVae !== undefined && spec.task !== 'segment') throw invalid('vaePath', 'applies to the segment task only')
  const stream = runner.stream({ ...rest, image, prompt })
  let tokens = 0
  for await (const _ of stream) onChunk?.(++tokens)
  const result: TaskResult = await stream.result
  if (spec.task === 'detect') result.detections = parseDetections(result.text, sizeOf(result))
  if (vaePath !== undefined) result.segmentations = await segmentationsOf(result, vaePath, rest.maxPixels)
  return result
}

/**
 * A task result as JSON: the fields of the job contract, masks as COCO RLE.
 *
 * @param result - from `model.batch` or `model.runTask`.
 * @returns what `JSON.stringify` can carry.
 */
export function taskResultJson(result: TaskResult): TaskResultJson {
  const json: TaskResultJson = { text: result.text, tokenIds: result.tokenIds, finishReason: result.finishReason, timings: result.timings }
  if (result.detections) json.detections = result.detections
  if (result.segmentations) json.segmentations = segmentationsToRle(result.segmentations)
  if (result.image) json.image = result.image
  return json
}
