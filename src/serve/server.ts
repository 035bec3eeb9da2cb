/**
 * `paligemma serve`: one loaded model behind an HTTP server that OpenAI and Ollama clients talk
 * to unchanged. Concurrent requests share the model's decode steps (continuous batching).
 *
 * Built on Node's own `http`: streaming responses (SSE, NDJSON) are plain writes there, and a
 * closed connection is one event that cancels the request's row in the batch. The routes need
 * no more than a table.
 *
 * @packageDocumentation
 */

import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

import type { PaliGemma } from '../model.js'
import { HttpError, readJson, toHttpError } from './http.js'
import { METRICS_CONTENT_TYPE, ServerMetrics } from './metrics.js'
import * as ollama from './ollama.js'
import type { RouteContext } from './generation.js'
import { chatCompletions, completions, listModels } from './openai.js'
import { uiFiles } from './ui.js'
import { detect, segment } from './vision.js'

/** Options of {@link serve}. */
export interface ServeOptions {
  /** Interface to listen on. Default `127.0.0.1` (this machine only). */
  host?: string
  /** TCP port; 0 picks a free one. Default 8080. */
  port?: number
  /** The model's id in `/v1/models` and `/api/tags`, and the `model` requests must name. */
  modelId: string
  /** Require `Authorization: Bearer <apiKey>` on every route but `/health`. */
  apiKey?: string
  /** Largest request body in bytes. Default 20 MB (a 15 MB image in base64). */
  maxBodyBytes?: number
  /**
   * Generation requests that may wait beyond the model's running batch (`info.maxBatch`).
   * Past that, new ones get 429 with `Retry-After`. Default 256.
   */
  maxQueue?: number
  /** Answer cross-origin requests from this origin (`*` for any). Default: no CORS headers. */
  cors?: string
  /**
   * A streamed response that has waited this long for its first token (behind a full batch)
   * sends its headers, then keep-alives, so that clients do not time out. Default 10 000 ms.
   */
  openStreamAfterMs?: number
  /**
   * The segmentation VAE (`vae-oid.safetensors`, see `convertVae`): masks for segment prompts
   * and `POST /v1/segment`. Without it, segment prompts return boxes with `mask: null` and
   * `/v1/segment` answers 501.
   */
  vaePath?: string
  /**
   * Fetch `http(s)` image URLs, within these limits (defaults: `maxBodyBytes` and 10 s). The
   * server then makes requests wherever its clients point it, internal addresses included: turn
   * it on only for trusted clients or behind an egress filter. Default: such URLs get a 400.
   */
  remoteImages?:
    | boolean
    | {
        /** Largest image in bytes. Default: `maxBodyBytes`. */
        maxBytes?: number
        /** Time for the whole fetch, redirects and body included. Default 10 000 ms. */
        timeoutMs?: number
      }
  /** Serve the page at `/` (drop an image, pick a task, see the answer and the boxes). Default true. */
  ui?: boolean
}

/** A running server. */
export interface RunningServer {
  /** `http://host:port`. */
  url: string
  /** The Node server, for its events. */
  server: Server
  /**
   * Stops accepting connections, lets open requests finish for up to `timeoutMs` (default
   * 10 s), then closes what is left, which cancels those requests; resolves once all are closed.
   */
  close(timeoutMs?: number): Promise<void>
}

type Api = 'openai' | 'ollama' | 'plain'
type Handler = (body: Record<string, unknown> | undefined, req: IncomingMessage, res: ServerResponse) => Promise<unknown> | unknown

interface Route {
  api: Api
  /** Reads a JSON body first, and counts as a generation for `maxQueue`. */
  body: boolean
  /** Answered without the API key (`/health` and the page, which asks for the key). */
  open?: boolean
  handle: Handler
}

/**
 * Serves `model` over HTTP until {@link RunningServer.close}. The routes: `GET /health`,
 * `GET /metrics`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
 * `POST /v1/detect`, `POST /v1/segment`, `GET /api/tags`, `GET /api/version`,
 * `POST /api/generate`, `POST /api/chat`, and the page at `GET /`. See docs/serve.md.
 *
 * @param model - a loaded model (the server does not dispose it).
 * @param options - where to listen, the model's id, the API key and the body limit.
 * @returns the server's URL and a `close()`.
 */
export async function serve(model: PaliGemma, options: ServeOptions): Promise<RunningServer> {
  const metrics = new ServerMetrics()
  const maxBody = options.maxBodyBytes ?? 20_000_000
  const remote = options.remoteImages
  const ctx: RouteContext = {
    model,
    metrics,
    modelId: options.modelId,
    created: Math.floor(Date.now() / 1000),
    openStreamAfterMs: options.openStreamAfterMs ?? 10_000,
    ...(options.vaePath === undefined ? {} : { vaePath: options.vaePath }),
    ...(remote ? { remoteImages: { maxBytes: (remote === true ? undefined : remote.maxBytes) ?? maxBody, timeoutMs: (remote === true ? undefined : remote.timeoutMs) ?? 10_000 } } : {}),
  }
  const expectedKey = options.apiKey === undefined ? undefined : digest(options.apiKey)
  const capacity = model.info.maxBatch + (options.maxQueue ?? 256)
  let inFlight = 0
  const routes: Record<string, Route> = {
    'GET /health': { api: 'plain', body: false, open: true, handle: () => ({ status: 'ok', model: ctx.modelId }) },
    'GET /metrics': {
      api: 'plain',
      body: false,
      handle: (_body, _req, res) => {
        res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE }).end(metrics.text())
      },
    },
    'GET /v1/models': { api: 'openai', body: false, handle: () => listModels(ctx) },
    'POST /v1/chat/completions': { api: 'openai', body: true, handle: (body, req, res) => chatCompletions(body!, ctx, req, res) },
    'POST /v1/completions': { api: 'openai', body: true, handle: (body, req, res) => completions(body!, ctx, req, res) },
    'POST /v1/detect': { api: 'openai', body: true, handle: (body, req, res) => detect(body!, ctx, req, res) },
    'POST /v1/segment': { api: 'openai', body: true, handle: (body, req, res) => segment(body!, ctx, req, res) },
    'GET /api/tags': { api: 'ollama', body: false, handle: () => ollama.tags(ctx) },
    'GET /api/version': { api: 'ollama', body: false, handle: () => ollama.version() },
    'POST /api/generate': { api: 'ollama', body: true, handle: (body, req, res) => ollama.generate(body!, ctx, req, res) },
    'POST /api/chat': { api: 'ollama', body: true, handle: (body, req, res) => ollama.chat(body!, ctx, req, res) },
  }
  if (options.ui !== false) {
    for (const [path, send] of Object.entries(uiFiles())) routes[`GET ${path}`] = { api: 'plain', body: false, open: true, handle: (_body, _req, res) => send(res) }
  }

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    const route = routes[`${req.method} ${path}`]
    const api: Api = route?.api ?? (path?.startsWith('/api/') ? 'ollama' : 'openai')
    if (options.cors) {
      res.setHeader('access-control-allow-origin', options.cors)
      if (req.method === 'OPTIONS') {
        res.writeHead(204, { 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': 'authorization, content-type', 'access-control-max-age': '600' }).end()
        return
      }
    }
    res.once('finish', () => metrics.requests.inc({ route: route ? `${req.method} ${path}` : 'unknown', status: String(res.statusCode) }))
    void (async () => {
      let counted = false
      try {
        if (!route) throw new HttpError(404, `no route ${req.method} ${path}`)
        if (expectedKey && !route.open) checkKey(req, expectedKey)
        if (route.body) {
          if (inFlight >= capacity) {
            throw new HttpError(429, `the server is full: ${inFlight} requests are running or waiting (--max-queue)`, { code: 'queue_full', headers: { 'retry-after': '1' } })
          }
          metrics.inFlight = ++inFlight
          counted = true
        }
        const body = route.body ? await readJson(req, maxBody) : undefined
        const payload = await route.handle(body, req, res)
        if (payload !== undefined && !res.headersSent) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(payload))
      } catch (error) {
        sendError(res, api, toHttpError(error))
      } finally {
        if (counted) metrics.inFlight = --inFlight
      }
    })()
  })
  // Slow or stalled clients cannot hold a connection for ever while sending their request.
  server.headersTimeout = 20_000
  server.requestTimeout = 120_000
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 8080, options.host ?? '127.0.0.1', () => resolve())
  })
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return {
    url: `http://${host}:${address.port}`,
    server,
    close: (timeoutMs = 10_000) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => server.closeAllConnections(), timeoutMs)
        server.close(() => {
          clearTimeout(timer)
          resolve()
        })
        server.closeIdleConnections()
      }),
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/** Bearer auth, compared in constant time (both sides hashed to the same length first). */
function checkKey(req: IncomingMessage, expected: Buffer): void {
  const header = req.headers.authorization ?? ''
  const given = /^Bearer (.+)$/i.exec(header)?.[1]
  if (given === undefined || !timingSafeEqual(digest(given), expected)) {
    throw new HttpError(401, 'missing or wrong API key: send Authorization: Bearer <key>', { code: 'invalid_api_key' })
  }
}

/** The error in the shape of the route's API: OpenAI's `{error: {…}}` or Ollama's `{error}`. */
function sendError(res: ServerResponse, api: Api, e: HttpError): void {
  if (res.headersSent) {
    if (!res.writableEnded) res.end()
    return
  }
  // 499 (the client went away) is never seen by that client; answer like a server error.
  const status = e.status === 499 ? 400 : e.status
  const body =
    api === 'ollama'
      ? { error: e.message }
      : { error: { message: e.message, type: e.type, param: e.options.param ?? null, code: e.options.code ?? null } }
  res.writeHead(status, { 'content-type': 'application/json', ...e.options.headers }).end(JSON.stringify(body))
}
