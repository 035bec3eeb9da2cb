/**
 * The image of a request, from a `data:` URL, bare base64 or, when the server allows it, a
 * remote `http(s)` URL fetched within a size and a time limit.
 *
 * @packageDocumentation
 * @internal
 */

import { HttpError } from './http.js'

/** Limits on fetching remote images; absent, remote URLs are refused. */
export interface RemoteImageLimits {
  /** Largest image in bytes. */
  maxBytes: number
  /** Time for the whole fetch, redirects and body included. */
  timeoutMs: number
}

/** Media types a `data:` image URL may declare. */
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/jpg', 'image/webp', 'image/gif', 'image/bmp'])

/**
 * The bytes behind an image URL: a `data:image/…;base64,…` URL, or an `http(s)` URL when
 * `remote` is given. Anything else is a 400 naming `param`.
 */
export async function imageFromUrl(url: unknown, param: string, remote: RemoteImageLimits | undefined): Promise<Buffer> {
  if (typeof url !== 'string') throw new HttpError(400, `${param} must be a string URL`, { param })
  if (/^https?:/i.test(url)) {
    if (!remote) {
      throw new HttpError(400, `${param}: remote image URLs are not fetched by this server (start it with --allow-remote-images); send the image as a data: URL (base64)`, {
        param,
        code: 'remote_image_refused',
      })
    }
    return fetchImage(url, param, remote)
  }
  const match = /^data:([^;,]+);base64,/i.exec(url.slice(0, 64))
  if (!match || !IMAGE_TYPES.has(match[1]!.toLowerCase())) {
    throw new HttpError(400, `${param} must be a data:image/(png|jpeg|webp|gif|bmp);base64,… URL`, { param, code: 'invalid_image_url' })
  }
  return decodeBase64(url.slice(match[0].length), param)
}

/** An image field that may be a URL (as {@link imageFromUrl}) or bare base64. */
export function imageField(value: unknown, param: string, remote: RemoteImageLimits | undefined): Promise<Buffer> {
  if (typeof value === 'string' && /^(data|https?):/i.test(value)) return imageFromUrl(value, param, remote)
  return Promise.resolve().then(() => decodeBase64(value, param))
}

/** Strict base64 (standard alphabet, optional padding): a 400 naming `param` otherwise. */
export function decodeBase64(text: unknown, param: string): Buffer {
  if (typeof text !== 'string' || text.length === 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 === 1) {
    throw new HttpError(400, `${param} is not valid base64`, { param, code: 'invalid_base64' })
  }
  return Buffer.from(text, 'base64')
}

/**
 * GETs `url` (redirects followed) within `limits`. A body over the limit is a 413 and stops being
 * read; a failed, slow or non-2xx fetch is a 400 saying which.
 */
export async function fetchImage(url: string, param: string, limits: RemoteImageLimits): Promise<Buffer> {
  const fail = (why: string, code = 'image_fetch_failed', status = 400): HttpError => new HttpError(status, `${param}: could not fetch ${url.slice(0, 200)}: ${why}`, { param, code })
  const signal = AbortSignal.timeout(limits.timeoutMs)
  let response: Response
  try {
    response = await fetch(url, { signal, redirect: 'follow', headers: { accept: 'image/*' } })
  } catch (error) {
    throw signal.aborted ? fail(`no answer within ${limits.timeoutMs} ms`, 'image_fetch_timeout') : fail((error as Error).cause instanceof Error ? ((error as Error).cause as Error).message : (error as Error).message)
  }
  const tooLarge = (): HttpError => fail(`the image is over the ${limits.maxBytes}-byte limit`, 'image_too_large', 413)
  try {
    if (!response.ok) throw fail(`HTTP ${response.status}`)
    if (Number(response.headers.get('content-length')) > limits.maxBytes) throw tooLarge()
    const chunks: Uint8Array[] = []
    let size = 0
    for await (const chunk of response.body ?? []) {
      size += chunk.length
      if (size > limits.maxBytes) throw tooLarge()
      chunks.push(chunk)
    }
    return Buffer.concat(chunks)
  } catch (error) {
    if (error instanceof HttpError) throw error
    throw signal.aborted ? fail(`the body did not arrive within ${limits.timeoutMs} ms`, 'image_fetch_timeout') : fail((error as Error).message)
  } finally {
    // Whatever was not read is dropped with the connection.
    if (!response.bodyUsed) await response.body?.cancel().catch(() => undefined)
  }
}
