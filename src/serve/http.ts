/**
 * What every route of `paligemma serve` shares: reading a JSON body within a size limit, and
 * the error that carries an HTTP status.
 *
 * @packageDocumentation
 * @internal
 */

import type { IncomingMessage } from 'node:http'

import { PaliGemmaError } from '../errors.js'

/** An error with the HTTP status and the OpenAI-style `type`/`param`/`code` it is answered with. */
export class HttpError extends Error {
  /**
   * @param status - the HTTP status.
   * @param message - what was wrong, in words.
   * @param options - OpenAI's `type` (default from the status), `param` and `code`, and headers.
   */
  constructor(
    readonly status: number,
    message: string,
    readonly options: { type?: string; param?: string; code?: string; headers?: Record<string, string> } = {},
  ) {
    super(message)
    this.name = 'HttpError'
  }

  /** OpenAI's error `type` for this status. */
  get type(): string {
    if (this.options.type) return this.options.type
    if (this.status === 401) return 'authentication_error'
    if (this.status === 404) return 'not_found_error'
    if (this.status === 429) return 'rate_limit_error'
    if (this.status >= 500) return 'server_error'
    return 'invalid_request_error'
  }
}

/** The HTTP error for anything a route threw: engine errors by their code, the rest a 500. */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error
  if (error instanceof PaliGemmaError) {
    const param = /invalid argument `([^`]+)`/.exec(error.message)?.[1]
    switch (error.code) {
      case 'ERR_INVALID_ARGUMENT':
        return new HttpError(400, error.message, { code: 'invalid_argument', ...(param ? { param } : {}) })
      case 'ERR_INVALID_IMAGE':
        return new HttpError(400, error.message, { code: 'invalid_image', param: 'image' })
      case 'ERR_DISPOSED':
        return new HttpError(503, 'the server is shutting down', { code: 'shutting_down' })
      case 'ABORT_ERR':
        return new HttpError(499, 'the request was cancelled', { code: 'cancelled' })
      default:
        return new HttpError(500, error.message, { code: error.code.toLowerCase() })
    }
  }
  return new HttpError(500, `internal error: ${error instanceof Error ? error.message : String(error)}`)
}

/**
 * Reads the request body as JSON: `application/json` only (415 otherwise), at most `limit` bytes
 * (413, without reading the rest), and a JSON object (400).
 */
export async function readJson(req: IncomingMessage, limit: number): Promise<Record<string, unknown>> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase()
  if (type !== 'application/json') {
    throw new HttpError(415, `the body must be application/json, got ${type ? JSON.stringify(type) : 'no content type'}`)
  }
  const declared = Number(req.headers['content-length'])
  if (Number.isFinite(declared) && declared > limit) {
    throw new HttpError(413, `the body is ${declared} bytes, more than the ${limit}-byte limit (--max-body)`)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limit) throw new HttpError(413, `the body is more than the ${limit}-byte limit (--max-body)`)
    chunks.push(chunk as Buffer)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (error) {
    throw new HttpError(400, `the body is not valid JSON: ${(error as Error).message}`, { code: 'invalid_json' })
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new HttpError(400, 'the body must be a JSON object', { code: 'invalid_json' })
  }
  return parsed as Record<string, unknown>
}
