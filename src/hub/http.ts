/**
 * Talking to the hub over HTTP: authenticated requests, HTTP errors as load errors, and a file's
 * metadata from `HEAD`.
 *
 * @internal
 */

import { setTimeout as sleep } from 'node:timers/promises'
import { PaliGemmaError } from '../errors.js'
import { abortError, loadError } from './common.js'
import type { FileMeta, Session } from './common.js'

/** Request headers: no compression, our user agent, and the token only for the hub's own origin. */
export function authHeaders(session: Session, url: string): Record<string, string> {
  const headers: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'paligemma-node' }
  // The token goes to the hub only, never to the storage a download redirects to.
  if (session.token && new URL(url).origin === new URL(session.endpoint).origin) headers.authorization = `Bearer ${session.token}`
  return headers
}

/** The user-facing error for an HTTP failure of a hub request. */
export function httpError(session: Session, response: Response, file: string): PaliGemmaError {
  const page = `${session.endpoint}/${session.id}`
  const code = response.headers.get('x-error-code') ?? ''
  const serverMessage = response.headers.get('x-error-message')
  const detail = serverMessage ? ` (hub: ${serverMessage})` : ''
  if (code === 'RepoNotFound') {
    return loadError(
      `${session.id}: no such local folder, and no such model on ${session.endpoint} (HTTP ${response.status}; ` +
        `if it is private, set HF_TOKEN to a token with access)${detail}`,
    )
  }
  if (response.status === 401 || response.status === 403 || code === 'GatedRepo') {
    const tokenHint = session.token
      ? 'The token in HF_TOKEN was sent but does not grant access: make sure it belongs to the account that accepted the license'
      : 'Then create an access token at https://huggingface.co/settings/tokens and set HF_TOKEN=<token>'
    return loadError(
      `${session.id} is gated or private (HTTP ${response.status} for ${file})${detail}. ` +
        `Accept the model's license on ${page} while logged in to Hugging Face. ${tokenHint}.`,
    )
  }
  if (response.status === 404) {
    if (code === 'RevisionNotFound') return loadError(`${session.id} has no revision named in the request (HTTP 404)${detail}`)
    return loadError(
      `${session.id}: no such model on ${session.endpoint} and no such local folder (HTTP 404 for ${file})${detail}. ` +
        'Pass a model folder, or a hub id such as google/paligemma2-3b-mix-224.',
    )
  }
  return loadError(`${session.id}: the hub answered HTTP ${response.status} for ${file}${detail}`)
}

/** Whether `error` comes from the caller's abort (or a fetch aborted by a stall timer). */
export function isAbort(error: unknown, signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true || (error instanceof Error && error.name === 'AbortError')
}

/**
 * `fetch` with the session's abort signal. A network failure (a reset keep-alive connection, a
 * refused connection) is retried twice, then becomes ERR_MODEL_LOAD "cannot reach".
 */
async function hubFetch(session: Session, url: string, init: RequestInit, file: string): Promise<Response> {
  let lastError: unknown
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await fetch(url, { ...init, signal: session.signal })
    } catch (error) {
      if (session.signal?.aborted) throw abortError(session.signal)
      lastError = error
      try {
        await sleep(100 * 2 ** attempt, undefined, { signal: session.signal })
      } catch {
        if (session.signal?.aborted) throw abortError(session.signal)
      }
    }
  }
  const reason =
    lastError instanceof Error ? ((lastError.cause as Error | undefined)?.message ?? lastError.message) : String(lastError)
  throw loadError(`cannot reach ${session.endpoint} to download ${session.id}/${file}: ${reason}`, lastError)
}

function etagOf(value: string | null): string | undefined {
  if (!value) return undefined
  return value.replace(/^W\//, '').replace(/^"|"$/g, '') || undefined
}

/**
 * HEAD of a file, the way `huggingface_hub` asks: relative redirects (a renamed repository) are
 * followed, an absolute one (LFS storage) is not — its headers carry the metadata.
 * Returns `undefined` when the file does not exist.
 */
export async function headFile(session: Session, revision: string, file: string): Promise<FileMeta | undefined> {
  let url = `${session.endpoint}/${session.id}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`
  for (let hop = 0; hop < 5; hop++) {
    const response = await hubFetch(session, url, { method: 'HEAD', redirect: 'manual', headers: authHeaders(session, url) }, file)
    const location = response.headers.get('location')
    const commit = response.headers.get('x-repo-commit')
    const linked = etagOf(response.headers.get('x-linked-etag'))
    if (response.status >= 300 && response.status < 400 && location) {
      const target = new URL(location, url)
      // An LFS redirect carries the metadata itself; a relative one (renamed repo) is followed.
      if (!linked && !/^https?:/i.test(location)) {
        url = target.href
        continue
      }
      return metaFrom(response, file, commit, linked, target.href)
    }
    if (response.status === 404 && (response.headers.get('x-error-code') ?? 'EntryNotFound') === 'EntryNotFound') return undefined
    if (!response.ok) throw httpError(session, response, file)
    return metaFrom(response, file, commit, linked, url)
  }
  throw loadError(`${session.id}/${file}: too many redirects`)
}

function metaFrom(response: Response, file: string, commit: string | null, linked: string | undefined, url: string): FileMeta {
  const etag = linked ?? etagOf(response.headers.get('etag'))
  const size = Number(response.headers.get('x-linked-size') ?? response.headers.get('content-length'))
  if (!commit || !etag || !Number.isSafeInteger(size) || size < 0) {
    throw loadError(
      `the hub's answer for ${file} lacks X-Repo-Commit, ETag or a size; is HF_ENDPOINT (${new URL(url).origin}) a Hugging Face hub?`,
    )
  }
  if (!/^[\w.-]+$/.test(etag) || !/^[0-9a-f]{6,64}$/i.test(commit)) throw loadError(`the hub sent an unusable ETag or commit for ${file}`)
  return { file, commit, etag, size, url }
}

/** A load error that a later attempt may not meet (a dropped or stalled connection). */
export interface RetryableError extends PaliGemmaError {
  retryable?: boolean
}

/** A {@link RetryableError}: the download resumes instead of failing. */
export function retryable(message: string, cause?: unknown): PaliGemmaError {
  const error: RetryableError = loadError(message, cause)
  error.retryable = true
  return error
}
