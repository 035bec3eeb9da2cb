/**
 * The Ollama-compatible routes: `GET /api/tags`, `GET /api/version`, `POST /api/generate` and
 * `POST /api/chat`, with `images: [base64]`, streamed as NDJSON (Ollama's default) or answered
 * whole with `stream: false`. The prompt is PaliGemma's task prefix, as on the OpenAI routes.
 *
 * @packageDocumentation
 * @internal
 */

import type { IncomingMessage, ServerResponse } from 'node:http'

import type { GenerateResult } from '../types.js'
import { optionalNumber, sampling, start, stopStrings, structured, whileWaiting } from './generation.js'
import type { Generation, RouteContext } from './generation.js'
import { HttpError, toHttpError } from './http.js'
import { decodeBase64 } from './images.js'

/** The package version Ollama clients see in `/api/version`. */
const VERSION = '0.1.0'

/** `GET /api/tags`. */
export function tags(ctx: RouteContext): unknown {
  const modified = new Date(ctx.created * 1000).toISOString()
  const details = { parent_model: '', format: 'safetensors', family: ctx.model.info.architecture, families: [ctx.model.info.architecture], parameter_size: '', quantization_level: ctx.model.info.dtype }
  return { models: [{ name: ctx.modelId, model: ctx.modelId, modified_at: modified, size: 0, digest: '', details }] }
}

/** `GET /api/version`. */
export function version(): unknown {
  return { version: VERSION }
}

function ollamaRequest(body: Record<string, unknown>, ctx: RouteContext, prompt: unknown, images: unknown): Generation {
  if (body.model !== undefined && body.model !== ctx.modelId) {
    throw new HttpError(404, `model ${JSON.stringify(body.model)} not found; this server serves ${JSON.stringify(ctx.modelId)}`)
  }
  if (typeof prompt !== 'string' || prompt.trim().length === 0) throw new HttpError(400, 'the prompt must be PaliGemma\'s task text, e.g. "caption en"')
  if (!Array.isArray(images) || images.length !== 1) {
    throw new HttpError(400, `exactly one image is required in images (got ${Array.isArray(images) ? images.length : 'none'})`)
  }
  const o = (typeof body.options === 'object' && body.options !== null ? body.options : {}) as Record<string, unknown>
  return {
    image: decodeBase64(images[0], 'images[0]'),
    prompt: prompt.trim(),
    sampling: sampling({
      maxNewTokens: optionalNumber(o.num_predict, 'options.num_predict'),
      temperature: optionalNumber(o.temperature, 'options.temperature'),
      topP: optionalNumber(o.top_p, 'options.top_p'),
      topK: optionalNumber(o.top_k, 'options.top_k'),
      repetitionPenalty: optionalNumber(o.repeat_penalty, 'options.repeat_penalty'),
      seed: optionalNumber(o.seed, 'options.seed'),
      stop: stopStrings(o.stop, 'options.stop'),
    }),
  }
}

/** `POST /api/generate`. */
export function generate(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const generation = ollamaRequest(body, ctx, body.prompt, body.images)
  return respond(generation, ctx, req, res, body.stream !== false, (text) => ({ response: text }))
}

/** `POST /api/chat`: the last user message's content and images. */
export function chat(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const messages = Array.isArray(body.messages) ? body.messages : []
  const last = [...messages].reverse().find((m) => typeof m === 'object' && m !== null && (m as { role?: unknown }).role === 'user') as
    | { content?: unknown; images?: unknown }
    | undefined
  if (!last) throw new HttpError(400, 'messages needs a user message with the task prompt and one image')
  const generation = ollamaRequest(body, ctx, last.content, last.images)
  return respond(generation, ctx, req, res, body.stream !== false, (text) => ({ message: { role: 'assistant', content: text } }))
}

/** Ollama's closing fields: counts and durations in nanoseconds. */
function closing(result: GenerateResult, total: number): Record<string, unknown> {
  const t = result.timings
  return {
    done_reason: result.finishReason === 'length' ? 'length' : 'stop',
    total_duration: Math.round(total * 1e6),
    load_duration: 0,
    prompt_eval_count: t.promptTokens,
    prompt_eval_duration: Math.round(t.prefillMs * 1e6),
    eval_count: result.tokenIds.length,
    eval_duration: Math.round(t.decodeMs * 1e6),
  }
}

async function respond(
  generation: Generation,
  ctx: RouteContext,
  req: IncomingMessage,
  res: ServerResponse,
  streaming: boolean,
  content: (text: string) => Record<string, unknown>,
): Promise<void> {
  const started = performance.now()
  const stream = start(ctx, generation, req, res)
  const base = (): Record<string, unknown> => ({ model: ctx.modelId, created_at: new Date().toISOString() })
  if (!streaming) {
    const result = await stream.result
    const extra = await structured(generation.prompt, result, ctx)
    const payload = { ...base(), ...content(result.text), done: true, ...closing(result, performance.now() - started), ...(extra ? { paligemma: extra } : {}) }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(payload))
    return
  }
  let opened = false
  const open = (): void => {
    if (!opened && !res.writableEnded) res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    opened = true
  }
  // Headers go out after a short wait, so clients queued behind a full batch do not time out
  // (NDJSON has no comment line for keep-alives).
  const waiting = whileWaiting(res, ctx.openStreamAfterMs, open)
  try {
    for await (const piece of stream) {
      waiting.stop()
      open()
      if (piece.text) res.write(`${JSON.stringify({ ...base(), ...content(piece.text), done: false })}\n`)
    }
    const result = await stream.result
    waiting.stop()
    open()
    const extra = await structured(generation.prompt, result, ctx)
    res.end(`${JSON.stringify({ ...base(), ...content(''), done: true, ...closing(result, performance.now() - started), ...(extra ? { paligemma: extra } : {}) })}\n`)
  } catch (error) {
    waiting.stop()
    if (!opened) throw error
    if (!res.writableEnded) res.end(`${JSON.stringify({ error: toHttpError(error).message })}\n`)
  }
}
