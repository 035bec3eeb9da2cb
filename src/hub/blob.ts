/**
 * Downloading one file into the blob store: resumable, stall-timed, checked against the hub's
 * size and hash, with throttled progress.
 *
 * @internal
 */

import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, rename, rm, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { PaliGemmaError } from '../errors.js'
import type { DownloadProgress } from '../hub.js'
import { ATTEMPTS, PROGRESS_INTERVAL_MS, STALL_MS, abortError, loadError } from './common.js'
import type { FileMeta, Session } from './common.js'
import { authHeaders, httpError, isAbort, retryable } from './http.js'
import type { RetryableError } from './http.js'

/** The hash that the etag names: sha256 (LFS), git's blob sha1 (small files), or none. */
function hasherFor(meta: FileMeta): { hash: Hash; kind: string } | undefined {
  if (/^[0-9a-f]{64}$/.test(meta.etag)) return { hash: createHash('sha256'), kind: 'sha256' }
  if (/^[0-9a-f]{40}$/.test(meta.etag)) {
    const hash = createHash('sha1')
    hash.update(`blob ${meta.size}\0`)
    return { hash, kind: 'git sha1' }
  }
  return undefined
}

async function hashExisting(path: string, hash: Hash, signal: AbortSignal | undefined): Promise<void> {
  for await (const chunk of createReadStream(path)) {
    if (signal?.aborted) throw abortError(signal)
    hash.update(chunk as Buffer)
  }
}

/** Tracks bytes across all files of one model and reports them, throttled. */
export class Progress {
  loaded = 0
  /** What the caller's callback threw: the download stops and rejects with it. */
  failure: { error: unknown } | undefined
  #last = 0
  constructor(
    readonly total: number,
    readonly report: ((progress: DownloadProgress) => void) | undefined,
  ) {}

  add(bytes: number, file: string, force = false): void {
    this.loaded += bytes
    if (!this.report || this.failure) return
    const now = Date.now()
    if (!force && now - this.#last < PROGRESS_INTERVAL_MS) return
    this.#last = now
    try {
      this.report({ phase: 'download', file, loadedBytes: Math.max(0, Math.min(this.loaded, this.total)), totalBytes: this.total })
    } catch (error) {
      this.failure = { error }
    }
    if (this.failure) throw this.failure.error
  }
}

/** Downloads one file into `blobs/<etag>`, resuming a `.incomplete` left by an earlier try. */
export async function downloadBlob(session: Session, meta: FileMeta, blob: string, progress: Progress): Promise<void> {
  const partial = `${blob}.incomplete`
  await mkdir(dirname(blob), { recursive: true })
  let lastError: unknown
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (session.signal?.aborted) throw abortError(session.signal)
    let have = 0
    try {
      have = (await stat(partial)).size
    } catch {
      have = 0
    }
    if (have > meta.size) {
      await rm(partial, { force: true })
      have = 0
    }
    if (attempt === 0 && have > 0) progress.add(have, meta.file)
    try {
      await fetchInto(session, meta, partial, have, progress)
      await verify(meta, partial, session.signal)
      await rename(partial, blob)
      return
    } catch (error) {
      if (progress.failure) throw progress.failure.error
      if (isAbort(error, session.signal)) throw session.signal ? abortError(session.signal) : error
      if (!(error instanceof PaliGemmaError)) throw loadError(`cannot store ${session.id}/${meta.file} in ${dirname(blob)}: ${String(error)}`, error)
      if (!(error as RetryableError).retryable) throw error
      lastError = error
      try {
        await sleep(Math.min(2000, 100 * 2 ** attempt), undefined, { signal: session.signal })
      } catch {
        if (session.signal?.aborted) throw abortError(session.signal)
      }
    }
  }
  const reason = lastError instanceof Error ? lastError.message : String(lastError)
  throw loadError(`cannot download ${session.id}/${meta.file} after ${ATTEMPTS} attempts: ${reason}`, lastError)
}

/** One GET, appending to `partial` from byte `have` (a Range request when `have > 0`). */
async function fetchInto(session: Session, meta: FileMeta, partial: string, have: number, progress: Progress): Promise<void> {
  // One signal for the caller's abort and the stall timer.
  const stall = new AbortController()
  const forward = (): void => stall.abort(session.signal?.reason)
  session.signal?.addEventListener('abort', forward, { once: true })
  try {
    await fetchBody(session, meta, partial, have, progress, stall)
  } finally {
    session.signal?.removeEventListener('abort', forward)
  }
}

async function fetchBody(
  session: Session,
  meta: FileMeta,
  partial: string,
  have: number,
  progress: Progress,
  stall: AbortController,
): Promise<void> {
  const signal = stall.signal
  let url = meta.url
  let response: Response | undefined
  for (let hop = 0; hop < 5 && response === undefined; hop++) {
    const headers = authHeaders(session, url)
    if (have > 0) headers.range = `bytes=${have}-`
    let answer: Response
    try {
      answer = await fetch(url, { headers, redirect: 'manual', signal })
    } catch (error) {
      if (session.signal?.aborted) throw abortError(session.signal)
      throw retryable(`network error: ${error instanceof Error ? error.message : String(error)}`, error)
    }
    const location = answer.headers.get('location')
    if (answer.status >= 300 && answer.status < 400 && location) {
      url = new URL(location, url).href
      continue
    }
    response = answer
  }
  if (!response) throw loadError(`${session.id}/${meta.file}: too many redirects`)
  if (response.status === 416 && have === meta.size) return
  if (response.status >= 500) throw retryable(`HTTP ${response.status}`)
  if (!response.ok) throw httpError(session, response, meta.file)
  if (!response.body) throw retryable('empty response body')
  let append = response.status === 206 && have > 0
  if (append) {
    const range = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '')
    if (!range || Number(range[1]) !== have) append = false
  }
  if (!append && have > 0) {
    // The server ignored the Range: start again.
    progress.add(-have, meta.file)
    await rm(partial, { force: true })
  }
  // A partial answer that does not continue the file: the next attempt starts from scratch.
  if (!append && response.status === 206) throw retryable(`${meta.file}: the server sent a range that does not continue the file`)
  const handle = await open(partial, append ? 'a' : 'w')
  let timer: NodeJS.Timeout | undefined
  const arm = (): void => {
    clearTimeout(timer)
    timer = setTimeout(() => stall.abort(), STALL_MS)
  }
  try {
    arm()
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      arm()
      await handle.write(chunk)
      progress.add(chunk.byteLength, meta.file)
    }
  } catch (error) {
    if (progress.failure) throw progress.failure.error
    if (session.signal?.aborted) throw abortError(session.signal)
    const reason = stall.signal.aborted ? `no data for ${STALL_MS / 1000} s` : error instanceof Error ? error.message : String(error)
    throw retryable(`the download of ${meta.file} was interrupted: ${reason}`, error)
  } finally {
    clearTimeout(timer)
    await handle.close()
  }
}

/** Checks the finished file's size and hash against the hub's metadata; deletes it if wrong. */
async function verify(meta: FileMeta, path: string, signal: AbortSignal | undefined): Promise<void> {
  const size = (await stat(path)).size
  if (size < meta.size) throw retryable(`${meta.file}: got ${size} of ${meta.size} bytes`)
  const hasher = hasherFor(meta)
  if (size !== meta.size || hasher) {
    let digest = ''
    if (size === meta.size && hasher) {
      await hashExisting(path, hasher.hash, signal)
      digest = hasher.hash.digest('hex')
      if (digest === meta.etag) return
    }
    await rm(path, { force: true })
    const what = size !== meta.size ? `${size} bytes, expected ${meta.size}` : `${hasher?.kind} ${digest}, expected ${meta.etag}`
    throw loadError(`the download of ${meta.file} is corrupt (${what}); it was deleted, try again`)
  }
}
