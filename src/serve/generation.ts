/**
 * One HTTP generation, whichever API it came through: an image and PaliGemma's task prompt run
 * through the model's batch, cancelled when the client goes away, and the structured result of
 * detect and segment prompts.
 *
 * @packageDocumentation
 * @internal
 */

import type { IncomingMessage, ServerResponse } from 'node:http'

import { decodeSegmentations } from '../image.js'
import type { PaliGemma } from '../model.js'
import { parseDetections, parseSegmentations } from '../parse.js'
import { segmentationsToRle } from '../rle.js'
import type { RleSegmentation } from '../rle.js'
import type { TokenStream } from '../stream.js'
import type { Detection, GenerateResult, SamplingOptions } from '../types.js'
import { HttpError } from './http.js'
import type { RemoteImageLimits } from './images.js'
import type { ServerMetrics } from './metrics.js'

/** What the routes need from the server. */
export interface RouteContext {
  model: PaliGemma
  /** Where finished generations are counted. */
  metrics: ServerMetrics
  /** The model's id in listings (the name given to `--model`). */
  modelId: string
  /** Unix seconds when the model was loaded. */
  created: number
  /** How long a streamed response may wait for its first token before its headers go out. */
  openStreamAfterMs: number
  /** The mask decoder for segment prompts; without it, segmentations have `mask: null`. */
  vaePath?: string
  /** Limits on fetching remote image URLs; without them, such URLs are refused. */
  remoteImages?: RemoteImageLimits
}

/** What both APIs reduce a request to. */
export interface Generation {
  image: Buffer
  /** PaliGemma's task prefix, verbatim (`caption en`, `detect cat ; dog`, …). */
  prompt: string
  sampling: SamplingOptions
}

/**
 * Starts `generation` on the model. The request is cancelled (its row leaves the batch) when
 * the client closes the connection before the response has ended.
 */
export function start(ctx: RouteContext, generation: Generation, req: IncomingMessage, res: ServerResponse): TokenStream {
  const controller = new AbortController()
  const onClose = (): void => {
    if (!res.writableEnded) controller.abort(new Error('the client disconnected'))
  }
  res.once('close', onClose)
  req.once('aborted', onClose)
  const stream = ctx.model.stream({ ...generation.sampling, image: generation.image, prompt: generation.prompt, signal: controller.signal })
  stream.result.then((result) => ctx.metrics.generation(result), () => undefined)
  return stream
}

/** What detect and segment prompts add to a response. */
export type Structured = { detections: Detection[] } | { segmentations: RleSegmentation[] }

/**
 * The parsed result of `detect` and `segment` prompts (boxes in the image's pixels, masks as
 * RLE when the server has the mask decoder); `undefined` for other tasks.
 */
export async function structured(prompt: string, result: GenerateResult, ctx: RouteContext): Promise<Structured | undefined> {
  if (!result.image) return undefined
  if (/^detect\s/.test(prompt)) return { detections: parseDetections(result.text, result.image) }
  if (!/^segment\s/.test(prompt)) return undefined
  if (ctx.vaePath === undefined) return { segmentations: parseSegmentations(result.text, result.image).map((s) => ({ ...s, mask: null })) }
  return { segmentations: segmentationsToRle(await decodeSegmentations(result.text, { ...result.image, vaePath: ctx.vaePath })) }
}

/** A number option, or undefined; a 400 naming `param` for anything else. */
export function optionalNumber(value: unknown, param: string): number | undefined {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new HttpError(400, `${param} must be a number`, { param })
  return value
}

/** `stop` as a string or a list of strings (OpenAI and Ollama both accept either). */
export function stopStrings(value: unknown, param: string): string[] | undefined {
  if (value === undefined || value === null) return undefined
  const list = typeof value === 'string' ? [value] : value
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new HttpError(400, `${param} must be a non-empty string or a list of at most 4 of them`, { param })
  }
  return list as string[]
}

/** Sampling options without the undefined ones (the engine refuses explicit `undefined`s). */
export function sampling(options: { [K in keyof SamplingOptions]?: SamplingOptions[K] | undefined }): SamplingOptions {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as SamplingOptions
}

/**
 * Calls `open` after `afterMs` without a token, then `keepAlive` every 1.5 × `afterMs` until
 * `stop()` (the first token, the end or an error).
 */
export function whileWaiting(res: ServerResponse, afterMs: number, open: () => void, keepAlive?: (res: ServerResponse) => void): { stop(): void } {
  let interval: NodeJS.Timeout | undefined
  const timer = setTimeout(() => {
    open()
    if (keepAlive) interval = setInterval(() => !res.writableEnded && keepAlive(res), afterMs * 1.5)
  }, afterMs)
  return {
    stop: () => {
      clearTimeout(timer)
      if (interval) clearInterval(interval)
    },
  }
}
