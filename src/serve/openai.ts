/**
 * The OpenAI-compatible routes: `GET /v1/models` and `POST /v1/chat/completions`.
 *
 * PaliGemma has no chat template: the prompt is the text of the last user message, verbatim,
 * as the task prefix (`caption en`, `answer en what is this?`, `detect cat ; dog`, `ocr`), and
 * that message carries exactly one image as an `image_url` part with a `data:` URL.
 *
 * @packageDocumentation
 * @internal
 */

import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'

import type { PaliGemma } from '../model.js'
import type { GenerateResult } from '../types.js'
import { optionalNumber, sampling, start, stopStrings, structured } from './generation.js'
import type { Generation } from './generation.js'
import { HttpError, decodeBase64, decodeDataUrl, toHttpError } from './http.js'
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
}

/** `GET /v1/models`. */
export function listModels(ctx: RouteContext): unknown {
  return { object: 'list', data: [{ id: ctx.modelId, object: 'model', created: ctx.created, owned_by: 'paligemma' }] }
}

/** A 404 when the request names another model than the one served. */
function checkModel(body: Record<string, unknown>, ctx: RouteContext): void {
  if (body.model !== undefined && body.model !== ctx.modelId) {
    throw new HttpError(404, `model ${JSON.stringify(body.model)} is not served here; this server serves ${JSON.stringify(ctx.modelId)}`, { param: 'model', code: 'model_not_found' })
  }
}

/** Turns a chat completion request into a generation, or a 400 saying what shape it needs. */
export function chatRequest(body: Record<string, unknown>, ctx: RouteContext): Generation {
  checkModel(body, ctx)
  if (body.n !== undefined && body.n !== 1) throw new HttpError(400, 'n must be 1', { param: 'n' })
  const messages = body.messages
  if (!Array.isArray(messages) || messages.length === 0) throw new HttpError(400, 'messages must be a non-empty array', { param: 'messages' })
  const last = [...messages].reverse().find((m) => typeof m === 'object' && m !== null && (m as { role?: unknown }).role === 'user') as
    | { content?: unknown }
    | undefined
  if (!last) throw new HttpError(400, 'messages needs a user message: its text is the task prompt and it carries the image', { param: 'messages' })
  const parts = typeof last.content === 'string' ? [{ type: 'text', text: last.content }] : last.content
  if (!Array.isArray(parts)) throw new HttpError(400, 'the user message content must be a string or a list of parts', { param: 'messages' })
  const texts: string[] = []
  const images: Buffer[] = []
  parts.forEach((part: unknown, i) => {
    const p = (typeof part === 'object' && part !== null ? part : {}) as { type?: unknown; text?: unknown; image_url?: unknown }
    if (p.type === 'text' && typeof p.text === 'string') texts.push(p.text)
    else if (p.type === 'image_url') {
      const url = typeof p.image_url === 'string' ? p.image_url : (p.image_url as { url?: unknown } | null)?.url
      images.push(decodeDataUrl(url, `messages[].content[${i}].image_url.url`))
    } else throw new HttpError(400, `content part ${i} must be {type: "text", text} or {type: "image_url", image_url: {url}}`, { param: 'messages' })
  })
  if (images.length !== 1) {
    throw new HttpError(400, `the last user message must carry exactly one image (it has ${images.length}); PaliGemma answers about one image per request`, { param: 'messages', code: 'image_required' })
  }
  const prompt = texts.join('').trim()
  if (prompt.length === 0) throw new HttpError(400, 'the last user message needs text: the task prompt, e.g. "caption en" or "detect cat"', { param: 'messages' })
  const maxTokens = optionalNumber(body.max_completion_tokens ?? body.max_tokens, body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens')
  return {
    image: images[0]!,
    prompt,
    sampling: sampling({
      maxNewTokens: maxTokens,
      temperature: optionalNumber(body.temperature, 'temperature'),
      topP: optionalNumber(body.top_p, 'top_p'),
      seed: optionalNumber(body.seed, 'seed'),
      stop: stopStrings(body.stop, 'stop'),
    }),
  }
}

const finishReason = (result: GenerateResult): string => (result.finishReason === 'length' ? 'length' : 'stop')

const usage = (result: GenerateResult): Record<string, number> => ({
  prompt_tokens: result.timings.promptTokens,
  completion_tokens: result.tokenIds.length,
  total_tokens: result.timings.promptTokens + result.tokenIds.length,
})

/** `POST /v1/chat/completions`, streamed as server-sent events or answered whole. */
export async function chatCompletions(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const generation = chatRequest(body, ctx)
  const id = `chatcmpl-${randomUUID()}`
  const created = Math.floor(Date.now() / 1000)
  const stream = start(ctx, generation, req, res)
  if (body.stream !== true) {
    const result = await stream.result
    const extra = structured(generation.prompt, result)
    const message = { role: 'assistant', content: result.text, ...(extra ? { paligemma: extra } : {}) }
    const payload = { id, object: 'chat.completion', created, model: ctx.modelId, choices: [{ index: 0, message, finish_reason: finishReason(result) }], usage: usage(result) }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(payload))
    return
  }
  const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}): string =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: ctx.modelId, choices, ...extra })}\n\n`
  let started = false
  const open = (): void => {
    if (started || res.writableEnded) return
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    res.write(chunk([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }]))
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
      if (piece.text) res.write(chunk([{ index: 0, delta: { content: piece.text }, finish_reason: null }]))
    }
    const result = await stream.result
    waiting.stop()
    open()
    const extra = structured(generation.prompt, result)
    res.write(chunk([{ index: 0, delta: extra ? { paligemma: extra } : {}, finish_reason: finishReason(result) }]))
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

/**
 * `POST /v1/detect`: `{ image, labels, max_tokens?, … }` → `{ model, detections, text, usage }`.
 * `image` is a data URL or bare base64; `labels` a string (`"cat ; dog"`) or a list.
 */
export async function detect(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<unknown> {
  checkModel(body, ctx)
  const labels = typeof body.labels === 'string' ? body.labels.split(';') : body.labels
  if (!Array.isArray(labels) || labels.length === 0 || !labels.every((l) => typeof l === 'string' && l.trim().length > 0 && !/[;\n]/.test(l))) {
    throw new HttpError(400, 'labels must be a non-empty string ("cat ; dog") or a list of labels without ";" or line breaks', { param: 'labels' })
  }
  const image = typeof body.image === 'string' && body.image.startsWith('data:') ? decodeDataUrl(body.image, 'image') : decodeBase64(body.image, 'image')
  const generation: Generation = {
    image,
    prompt: `detect ${labels.map((l: string) => l.trim()).join(' ; ')}`,
    sampling: sampling({ maxNewTokens: optionalNumber(body.max_tokens, 'max_tokens'), temperature: optionalNumber(body.temperature, 'temperature'), seed: optionalNumber(body.seed, 'seed') }),
  }
  const result = await start(ctx, generation, req, res).result
  return { model: ctx.modelId, detections: structured(generation.prompt, result)?.detections ?? [], text: result.text, usage: usage(result) }
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
