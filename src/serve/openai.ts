/**
 * The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions` and
 * `POST /v1/completions`.
 *
 * PaliGemma has no chat template: the prompt is the text of the last user message, verbatim,
 * as the task prefix (`caption en`, `answer en what is this?`, `detect cat ; dog`, `ocr`), and
 * that message carries exactly one image as an `image_url` part. `/v1/completions` takes the
 * prompt as is and the image in the `image` extension field.
 *
 * @packageDocumentation
 * @internal
 */

import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'

import type { GenerateResult } from '../types.js'
import { optionalNumber, sampling, start, stopStrings, structured, whileWaiting } from './generation.js'
import type { Generation, RouteContext, Structured } from './generation.js'
import { HttpError, toHttpError } from './http.js'
import { imageField, imageFromUrl } from './images.js'

/** `GET /v1/models`. */
export function listModels(ctx: RouteContext): unknown {
  return { object: 'list', data: [{ id: ctx.modelId, object: 'model', created: ctx.created, owned_by: 'paligemma' }] }
}

/** A 404 when the request names another model than the one served. */
export function checkModel(body: Record<string, unknown>, ctx: RouteContext): void {
  if (body.model !== undefined && body.model !== ctx.modelId) {
    throw new HttpError(404, `model ${JSON.stringify(body.model)} is not served here; this server serves ${JSON.stringify(ctx.modelId)}`, { param: 'model', code: 'model_not_found' })
  }
}

/** The sampling fields both OpenAI routes share. */
function openAiSampling(body: Record<string, unknown>): Generation['sampling'] {
  if (body.n !== undefined && body.n !== 1) throw new HttpError(400, 'n must be 1', { param: 'n' })
  const maxTokens = optionalNumber(body.max_completion_tokens ?? body.max_tokens, body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens')
  return sampling({
    maxNewTokens: maxTokens,
    temperature: optionalNumber(body.temperature, 'temperature'),
    topP: optionalNumber(body.top_p, 'top_p'),
    seed: optionalNumber(body.seed, 'seed'),
    stop: stopStrings(body.stop, 'stop'),
  })
}

/** Turns a chat completion request into a generation, or a 400 saying what shape it needs. */
export async function chatRequest(body: Record<string, unknown>, ctx: RouteContext): Promise<Generation> {
  checkModel(body, ctx)
  const generationSampling = openAiSampling(body)
  const messages = body.messages
  if (!Array.isArray(messages) || messages.length === 0) throw new HttpError(400, 'messages must be a non-empty array', { param: 'messages' })
  const last = [...messages].reverse().find((m) => typeof m === 'object' && m !== null && (m as { role?: unknown }).role === 'user') as
    | { content?: unknown }
    | undefined
  if (!last) throw new HttpError(400, 'messages needs a user message: its text is the task prompt and it carries the image', { param: 'messages' })
  const parts = typeof last.content === 'string' ? [{ type: 'text', text: last.content }] : last.content
  if (!Array.isArray(parts)) throw new HttpError(400, 'the user message content must be a string or a list of parts', { param: 'messages' })
  const texts: string[] = []
  const imageUrls: [unknown, string][] = []
  parts.forEach((part: unknown, i) => {
    const p = (typeof part === 'object' && part !== null ? part : {}) as { type?: unknown; text?: unknown; image_url?: unknown }
    if (p.type === 'text' && typeof p.text === 'string') texts.push(p.text)
    else if (p.type === 'image_url') {
      const url = typeof p.image_url === 'string' ? p.image_url : (p.image_url as { url?: unknown } | null)?.url
      imageUrls.push([url, `messages[].content[${i}].image_url.url`])
    } else throw new HttpError(400, `content part ${i} must be {type: "text", text} or {type: "image_url", image_url: {url}}`, { param: 'messages' })
  })
  if (imageUrls.length !== 1) {
    throw new HttpError(400, `the last user message must carry exactly one image (it has ${imageUrls.length}); PaliGemma answers about one image per request`, { param: 'messages', code: 'image_required' })
  }
  const prompt = texts.join('').trim()
  if (prompt.length === 0) throw new HttpError(400, 'the last user message needs text: the task prompt, e.g. "caption en" or "detect cat"', { param: 'messages' })
  const [url, param] = imageUrls[0]!
  return { image: await imageFromUrl(url, param, ctx.remoteImages), prompt, sampling: generationSampling }
}

/** Turns a (legacy) completion request into a generation: `prompt` verbatim, `image` alongside. */
export async function completionRequest(body: Record<string, unknown>, ctx: RouteContext): Promise<Generation> {
  checkModel(body, ctx)
  const generationSampling = openAiSampling(body)
  const prompt = Array.isArray(body.prompt) && body.prompt.length === 1 ? body.prompt[0] : body.prompt
  if (typeof prompt !== 'string' || prompt.trim().length === 0) {
    throw new HttpError(400, 'prompt must be one string: the task prompt, e.g. "caption en" or "detect cat"', { param: 'prompt' })
  }
  if (body.image === undefined) {
    throw new HttpError(400, 'image is required: a data: URL or base64 (an extension field; PaliGemma answers about one image)', { param: 'image', code: 'image_required' })
  }
  return { image: await imageField(body.image, 'image', ctx.remoteImages), prompt: prompt.trim(), sampling: generationSampling }
}

const finishReason = (result: GenerateResult): string => (result.finishReason === 'length' ? 'length' : 'stop')

const usage = (result: GenerateResult): Record<string, number> => ({
  prompt_tokens: result.timings.promptTokens,
  completion_tokens: result.tokenIds.length,
  total_tokens: result.timings.promptTokens + result.tokenIds.length,
})

/** How one OpenAI route shapes its answer. */
interface Shape {
  /** `chat.completion` or `text_completion`; streamed chunks of chat add `.chunk`. */
  object: string
  /** The whole answer's choice. */
  whole(result: GenerateResult, extra: Structured | undefined): Record<string, unknown>
  /** A streamed choice: the first (`text` undefined), a piece of text, or the last. */
  piece(text: string | undefined, result?: GenerateResult, extra?: Structured): Record<string, unknown>
}

const chatShape: Shape = {
  object: 'chat.completion',
  whole: (result, extra) => ({ message: { role: 'assistant', content: result.text, ...(extra ? { paligemma: extra } : {}) }, finish_reason: finishReason(result) }),
  piece: (text, result, extra) =>
    result
      ? { delta: extra ? { paligemma: extra } : {}, finish_reason: finishReason(result) }
      : { delta: text === undefined ? { role: 'assistant', content: '' } : { content: text }, finish_reason: null },
}

const completionShape: Shape = {
  object: 'text_completion',
  whole: (result, extra) => ({ text: result.text, logprobs: null, finish_reason: finishReason(result), ...(extra ? { paligemma: extra } : {}) }),
  piece: (text, result, extra) => ({ text: text ?? '', logprobs: null, finish_reason: result ? finishReason(result) : null, ...(extra ? { paligemma: extra } : {}) }),
}

/** `POST /v1/chat/completions`, streamed as server-sent events or answered whole. */
export async function chatCompletions(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  return respond(body, await chatRequest(body, ctx), chatShape, `chatcmpl-${randomUUID()}`, ctx, req, res)
}

/** `POST /v1/completions`: the task prompt as `prompt`, the image as `image`. */
export async function completions(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  return respond(body, await completionRequest(body, ctx), completionShape, `cmpl-${randomUUID()}`, ctx, req, res)
}

async function respond(
  body: Record<string, unknown>,
  generation: Generation,
  shape: Shape,
  id: string,
  ctx: RouteContext,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: shape.object, created, model: ctx.modelId }
  const stream = start(ctx, generation, req, res)
  if (body.stream !== true) {
    const result = await stream.result
    const choice = shape.whole(result, await structured(generation.prompt, result, ctx))
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...head, choices: [{ index: 0, ...choice }], usage: usage(result), timings: result.timings }))
    return
  }
  const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true
  const chunkObject = shape === chatShape ? 'chat.completion.chunk' : shape.object
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}): string => `data: ${JSON.stringify({ ...head, object: chunkObject, choices, ...extra })}\n\n`
  let started = false
  const open = (): void => {
    if (started || res.writableEnded) return
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    if (shape === chatShape) res.write(chunk([{ index: 0, ...shape.piece(undefined) }]))
    started = true
  }
  // A request that waits behind a full batch answers no bytes for as long as it waits; clients
  // give up on headers after a few minutes (undici: 300 s). So the stream opens after a short
  // wait and sends SSE comments until the first token (an error after that comes as an event).
  const waiting = whileWaiting(res, ctx.openStreamAfterMs, open, (r) => r.write(': waiting for the batch\n\n'))
  try {
    for await (const piece of stream) {
      waiting.stop()
      open()
      if (piece.text) res.write(chunk([{ index: 0, ...shape.piece(piece.text) }]))
    }
    const result = await stream.result
    const extra = await structured(generation.prompt, result, ctx)
    waiting.stop()
    open()
    // `timings` (an extension, as llama.cpp's server sends) rides on the last choice chunk.
    res.write(chunk([{ index: 0, ...shape.piece('', result, extra) }], { timings: result.timings }))
    if (includeUsage) res.write(chunk([], { usage: usage(result) }))
    res.end('data: [DONE]\n\n')
  } catch (error) {
    waiting.stop()
    if (!started) throw error
    // Headers are gone: the error travels as an event, as OpenAI's own API does.
    const e = toHttpError(error)
    if (!res.writableEnded) res.end(`data: ${JSON.stringify({ error: { message: e.message, type: e.type, param: e.options.param ?? null, code: e.options.code ?? null } })}\n\n`)
  }
}

export { usage }
