/**
 * One HTTP generation, whichever API it came through: an image and PaliGemma's task prompt run
 * through the model's batch, cancelled when the client goes away, and the structured result of
 * detect prompts.
 *
 * @packageDocumentation
 * @internal
 */

import type { IncomingMessage, ServerResponse } from 'node:http'

import { parseDetections } from '../parse.js'
import type { TokenStream } from '../stream.js'
import type { Detection, GenerateResult, SamplingOptions } from '../types.js'
import { HttpError } from './http.js'
import type { RouteContext } from './openai.js'

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

/** Parsed boxes for `detect` prompts (in the image's pixels); `undefined` for other tasks. */
export function structured(prompt: string, result: GenerateResult): { detections: Detection[] } | undefined {
  if (!/^detect\s/.test(prompt) || !result.image) return undefined
  return { detections: parseDetections(result.text, result.image) }
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
