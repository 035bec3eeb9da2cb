/**
 * Models from the Hugging Face hub: `PaliGemma.load('google/paligemma2-3b-mix-224')` and
 * `paligemma caption --model google/paligemma2-3b-mix-224` download the checkpoint into the
 * standard Hugging Face cache (shared with Python's `huggingface_hub`, so a model downloaded by
 * either is reused by the other) and load it from there.
 *
 * Cache layout (`huggingface_hub`'s): `<cache>/models--<owner>--<name>/blobs/<etag>` holds each
 * file's bytes under its content hash, `refs/<revision>` the commit a branch pointed to, and
 * `snapshots/<commit>/<file>` links to the blobs. `<cache>` is `HF_HUB_CACHE`, else
 * `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
 *
 * @packageDocumentation
 */

import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs'
import { copyFile, mkdir, open, readFile, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { dirname, join, relative, resolve } from 'node:path'

import { AbortError, PaliGemmaError } from './errors.js'
import type { LoadProgress } from './types.js'

/** Download progress, reported while a hub model's files are fetched. */
export interface DownloadProgress extends LoadProgress {
  /** Always `'download'`: tells download progress apart from weight loading in a shared callback. */
  phase: 'download'
  /** The file being downloaded (a path inside the repository). */
  file: string
}

/** Options of {@link resolveModel} and {@link downloadModel}. */
export interface ResolveModelOptions {
  /** Branch, tag or commit to download. Default `'main'`. */
  revision?: string
  /**
   * Called as files download (at most every ~100 ms, and once more when all bytes are in):
   * `loadedBytes` of `totalBytes` still missing from the cache when the download started.
   * Not called when everything is cached.
   */
  onProgress?: (progress: DownloadProgress) => void
  /** Cancels the download; the promise then rejects with an {@link AbortError}. Partial files stay for a later resume. */
  signal?: AbortSignal
  /** Access token. Default: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `huggingface-cli login` writes. */
  token?: string
  /** Hub address. Default: `HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint?: string
  /** Cache folder. Default: see the module documentation. */
  cacheDir?: string
  /** Use only the cache, never the network. Default: `HF_HUB_OFFLINE` is `1`/`true`. */
  offline?: boolean
  /**
   * Fetch `config.json` only (enough for {@link inspectModel}); the returned folder then has no
   * weights. Default `false`.
   */
  configOnly?: boolean
}

/** Files fetched when the repository has them; missing ones are skipped. */
const OPTIONAL_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'preprocessor_config.json',
  'generation_config.json',
]
const WEIGHTS = 'model.safetensors'
const WEIGHTS_INDEX = 'model.safetensors.index.json'

/** Download attempts per file (the first plus resumes after a dropped connection). */
const ATTEMPTS = 5
/** A response that sends nothing for this long is abandoned and retried. */
const STALL_MS = 60_000
const PROGRESS_INTERVAL_MS = 100

const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]*[A-Za-z0-9_]$/

/**
 * Whether `value` has the shape of a hub model id, `owner/name` (one slash, letters, digits,
 * `-`, `_`, `.`; no `..`). Says nothing about whether the repository exists.
 */
export function isHubModelId(value: string): boolean {
  return HUB_ID.test(value) && !value.includes('..')
}

function envFlag(name: string): boolean {
  return /^(1|true|yes|on)$/i.test(process.env[name] ?? '')
}

/** The Hugging Face home folder: `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
function hfHome(): string {
  if (process.env.HF_HOME) return process.env.HF_HOME
  const xdg = process.env.XDG_CACHE_HOME || join(homedir(), '.cache')
  return join(xdg, 'huggingface')
}

/**
 * The hub cache folder this process uses: `HF_HUB_CACHE` (or the older
 * `HUGGINGFACE_HUB_CACHE`), else `<HF_HOME>/hub`.
 */
export function hubCacheDir(): string {
  return process.env.HF_HUB_CACHE || process.env.HUGGINGFACE_HUB_CACHE || join(hfHome(), 'hub')
}

function hubEndpoint(options: ResolveModelOptions): string {
  return (options.endpoint || process.env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, '')
}

function hubToken(options: ResolveModelOptions): string | undefined {
  if (options.token) return options.token
  const fromEnv = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN
  if (fromEnv) return fromEnv.trim()
  const file = process.env.HF_TOKEN_PATH || join(hfHome(), 'token')
  try {
    const token = readFileSync(file, 'utf8').trim()
    return token || undefined
  } catch {
    return undefined
  }
}

/** The folder of one repository in the cache. */
function repoFolder(cacheDir: string, id: string): string {
  return join(cacheDir, `models--${id.replace('/', '--')}`)
}

function loadError(message: string, cause?: unknown): PaliGemmaError {
  return new PaliGemmaError('ERR_MODEL_LOAD', message, cause === undefined ? undefined : { cause })
}

function abortError(signal: AbortSignal): AbortError {
  return new AbortError(undefined, signal.reason === undefined ? undefined : { cause: signal.reason })
}

function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision)
}

/** A file's hub metadata, from the headers of `HEAD /<id>/resolve/<rev>/<file>`. */
interface FileMeta {
  file: string
  commit: string
  /** The blob id: the sha256 of an LFS file, the git blob sha1 of a small one. */
  etag: string
  size: number
  /** Where the bytes are: the resolve URL, or the LFS redirect's target. */
  url: string
}

/** What a download needs to reach the hub. */
interface Session {
  id: string
  endpoint: string
  token: string | undefined
  signal: AbortSignal | undefined
}

function authHeaders(session: Session, url: string): Record<string, string> {
  const headers: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'paligemma-node' }
  // The token goes to the hub only, never to the storage a download redirects to.
  if (session.token && new URL(url).origin === new URL(session.endpoint).origin) headers.authorization = `Bearer ${session.token}`
  return headers
}

/** The user-facing error for an HTTP failure of a hub request. */
function httpError(session: Session, response: Response, file: string): PaliGemmaError {
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

function isAbort(error: unknown, signal: AbortSignal | undefined): boolean {
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
async function headFile(session: Session, revision: string, file: string): Promise<FileMeta | undefined> {
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
class Progress {
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
async function downloadBlob(session: Session, meta: FileMeta, blob: string, progress: Progress): Promise<void> {
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

interface RetryableError extends PaliGemmaError {
  retryable?: boolean
}

function retryable(message: string, cause?: unknown): PaliGemmaError {
  const error: RetryableError = loadError(message, cause)
  error.retryable = true
  return error
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

/** Links `snapshots/<commit>/<file>` to its blob (a copy where symlinks are not allowed). */
async function linkSnapshot(repo: string, meta: FileMeta): Promise<void> {
  const blob = join(repo, 'blobs', meta.etag)
  const target = join(repo, 'snapshots', meta.commit, meta.file)
  await mkdir(dirname(target), { recursive: true })
  try {
    if (statSync(target).size === meta.size) return
  } catch {
    // Not there yet.
  }
  await unlink(target).catch(() => undefined)
  try {
    await symlink(relative(dirname(target), blob), target)
  } catch {
    await copyFile(blob, target)
  }
}

/** Whether `blobs/<etag>` already holds the file. */
function blobReady(blob: string, size: number): boolean {
  try {
    return statSync(blob).size === size
  } catch {
    return false
  }
}

/** The snapshot folder a cached revision points to, if it has a config and weights. */
async function cachedSnapshot(repo: string, revision: string, configOnly = false): Promise<string | undefined> {
  let commit = revision
  if (!isCommitHash(revision)) {
    try {
      commit = (await readFile(join(repo, 'refs', revision), 'utf8')).trim()
    } catch {
      return undefined
    }
  }
  const dir = join(repo, 'snapshots', commit)
  if (!existsSync(join(dir, 'config.json'))) return undefined
  if (configOnly || existsSync(join(dir, WEIGHTS))) return dir
  try {
    const index = JSON.parse(await readFile(join(dir, WEIGHTS_INDEX), 'utf8')) as { weight_map?: Record<string, string> }
    const shards = new Set(Object.values(index.weight_map ?? {}))
    if (shards.size > 0 && [...shards].every((shard) => existsSync(join(dir, shard)))) return dir
  } catch {
    return undefined
  }
  return undefined
}

function shardsOf(indexText: string, file: string): string[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(indexText)
  } catch (error) {
    throw loadError(`${file} is not valid JSON`, error)
  }
  const map = (parsed as { weight_map?: unknown }).weight_map
  if (typeof map !== 'object' || map === null) throw loadError(`${file} has no weight_map`)
  const shards = [...new Set(Object.values(map as Record<string, unknown>))]
  if (shards.length === 0 || !shards.every((s): s is string => typeof s === 'string' && /^[\w.-]+$/.test(s))) {
    throw loadError(`${file} lists unusable shard names`)
  }
  return shards
}

const inFlight = new Map<string, Promise<string>>()

/**
 * Downloads a model from the Hugging Face hub into the cache (or finds it there) and returns its
 * snapshot folder. Fetches `config.json`, `model.safetensors` (or `model.safetensors.index.json`
 * and its shards) and, when present, `tokenizer.json` and the other small configuration files.
 *
 * Each file is checked against the hub's metadata: size, and sha256 (LFS files) or git blob sha1
 * (small files). An interrupted download resumes with an HTTP Range request, also in a later
 * process. Files already in the cache are not downloaded again. When the hub cannot be reached,
 * a complete cached copy of the revision is used.
 *
 * @param id - `owner/name`, e.g. `google/paligemma2-3b-mix-224`.
 * @param options - revision, token, progress callback, abort signal, endpoint, cache folder.
 * @returns the local folder (`.../snapshots/<commit>`), ready for {@link PaliGemma.load}.
 * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD`: unknown model, gated model without access
 *   (the message says to accept the license and set `HF_TOKEN`), network failure with nothing
 *   cached, or a corrupt download; `ERR_INVALID_ARGUMENT` for a malformed id;
 *   {@link AbortError} when `signal` aborts.
 */
export function downloadModel(id: string, options: ResolveModelOptions = {}): Promise<string> {
  if (typeof id !== 'string' || !isHubModelId(id)) {
    return Promise.reject(new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`id\`: ${JSON.stringify(id)} is not a hub id such as google/paligemma2-3b-mix-224`))
  }
  const cacheDir = resolve(options.cacheDir ?? hubCacheDir())
  const key = `${cacheDir}\0${id}\0${options.revision ?? 'main'}\0${options.configOnly === true}`
  // Concurrent loads of one model in one process share a download; a caller's own signal
  // still cancels only its wait when it is not the one downloading.
  const running = inFlight.get(key)
  if (running) {
    // Progress goes to the caller that started the download. If that caller aborts, the others
    // start again (and resume its partial files).
    const shared = running.catch((error: unknown) => {
      if (error instanceof AbortError && !options.signal?.aborted) return downloadModel(id, options)
      throw error
    })
    return withSignal(shared, options.signal)
  }
  const work = download(id, cacheDir, options).finally(() => inFlight.delete(key))
  inFlight.set(key, work)
  return work
}

function withSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise
  if (signal.aborted) return Promise.reject(abortError(signal))
  return new Promise<T>((done, fail) => {
    const onAbort = (): void => fail(abortError(signal))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        done(value)
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort)
        fail(error)
      },
    )
  })
}

async function download(id: string, cacheDir: string, options: ResolveModelOptions): Promise<string> {
  const revision = options.revision ?? 'main'
  if (typeof revision !== 'string' || !/^[\w.-]+(\/[\w.-]+)*$/.test(revision) || revision.split('/').some((part) => /^\.+$/.test(part))) {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`revision\`: ${JSON.stringify(revision)} is not a branch, tag or commit name`)
  }
  const signal = options.signal
  if (signal?.aborted) throw abortError(signal)
  const repo = repoFolder(cacheDir, id)
  const offline = options.offline ?? envFlag('HF_HUB_OFFLINE')
  const configOnly = options.configOnly === true
  if (offline || isCommitHash(revision)) {
    const cached = await cachedSnapshot(repo, revision, configOnly)
    if (cached) return cached
    if (offline) throw loadError(`${id} (${revision}) is not in the cache ${cacheDir}, and HF_HUB_OFFLINE forbids downloading it`)
  }
  const session: Session = { id, endpoint: hubEndpoint(options), token: hubToken(options), signal }
  let config: FileMeta | undefined
  try {
    config = await headFile(session, revision, 'config.json')
  } catch (error) {
    // Offline or the hub is down: a complete cached copy will do (as huggingface_hub does).
    const cached = error instanceof PaliGemmaError && error.code === 'ERR_MODEL_LOAD' && /cannot reach/.test(error.message)
      ? await cachedSnapshot(repo, revision, configOnly)
      : undefined
    if (cached) return cached
    throw error
  }
  if (!config) throw loadError(`${id} has no config.json at revision ${revision}: not a transformers model repository`)
  const commit = config.commit
  const metas: FileMeta[] = [config]
  if (configOnly) {
    await downloadAll(session, repo, metas, options.onProgress)
    await writeRef(repo, revision, commit)
    return join(repo, 'snapshots', commit)
  }
  const weights = await headFile(session, commit, WEIGHTS)
  let shardIndex: FileMeta | undefined
  if (weights) {
    metas.push(weights)
  } else {
    shardIndex = await headFile(session, commit, WEIGHTS_INDEX)
    if (!shardIndex) throw loadError(`${id} has neither ${WEIGHTS} nor ${WEIGHTS_INDEX}: no safetensors weights to load`)
    metas.push(shardIndex)
  }
  for (const file of OPTIONAL_FILES) {
    const meta = await headFile(session, commit, file)
    if (meta) metas.push(meta)
  }
  if (shardIndex) {
    // The shard list is inside the index: fetch the small files first, then the shards.
    await downloadAll(session, repo, metas, options.onProgress)
    const indexText = await readFile(join(repo, 'blobs', shardIndex.etag), 'utf8')
    const shards: FileMeta[] = []
    for (const shard of shardsOf(indexText, WEIGHTS_INDEX)) {
      const meta = await headFile(session, commit, shard)
      if (!meta) throw loadError(`${id}: ${WEIGHTS_INDEX} lists ${shard}, which the repository does not have`)
      shards.push(meta)
    }
    await downloadAll(session, repo, shards, options.onProgress)
  } else {
    await downloadAll(session, repo, metas, options.onProgress)
  }
  await writeRef(repo, revision, commit)
  return join(repo, 'snapshots', commit)
}

/** Downloads the files whose blobs are missing and links all of them into the snapshot. */
async function downloadAll(
  session: Session,
  repo: string,
  list: FileMeta[],
  onProgress: ((progress: DownloadProgress) => void) | undefined,
): Promise<void> {
  const blobOf = (meta: FileMeta): string => join(repo, 'blobs', meta.etag)
  const missing = list.reduce((sum, meta) => sum + (blobReady(blobOf(meta), meta.size) ? 0 : meta.size), 0)
  const progress = new Progress(missing, onProgress)
  for (const meta of list) {
    if (!blobReady(blobOf(meta), meta.size)) {
      await downloadBlob(session, meta, blobOf(meta), progress)
      progress.add(0, meta.file, true)
    }
    await linkSnapshot(repo, meta)
  }
}

/** Records the commit a branch or tag pointed to, as `refs/<revision>`. */
async function writeRef(repo: string, revision: string, commit: string): Promise<void> {
  if (isCommitHash(revision)) return
  const ref = join(repo, 'refs', ...revision.split('/'))
  await mkdir(dirname(ref), { recursive: true })
  await writeFile(ref, commit)
}

/**
 * A model folder for `idOrDir`: the folder itself when it exists, else a hub model (see
 * {@link downloadModel}) when it looks like `owner/name`.
 *
 * @param idOrDir - a local folder, or a hub id such as `google/paligemma2-3b-mix-224`.
 * @param options - see {@link ResolveModelOptions}.
 * @returns the path of a local model folder.
 * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD` when `idOrDir` is neither an existing folder
 *   nor a hub id, or the download fails (see {@link downloadModel}); {@link AbortError}.
 */
export async function resolveModel(idOrDir: string, options: ResolveModelOptions = {}): Promise<string> {
  if (typeof idOrDir === 'string' && isDirectory(idOrDir)) return idOrDir
  if (typeof idOrDir === 'string' && isHubModelId(idOrDir)) return downloadModel(idOrDir, options)
  throw loadError(
    `no model folder at ${JSON.stringify(idOrDir)}, and it is not a Hugging Face hub id either (owner/name, e.g. google/paligemma2-3b-mix-224)`,
  )
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

/**
 * `PaliGemma.load`'s hook: a hub id that is not an existing folder is downloaded first; anything
 * else is returned unchanged for the usual validation. Download progress goes to the load's
 * `onProgress` (with `phase: 'download'`).
 *
 * @internal
 */
export async function resolveLoadTarget<T>(modelDir: T, options: unknown): Promise<T | string> {
  if (typeof modelDir !== 'string' || !isHubModelId(modelDir) || isDirectory(modelDir)) return modelDir
  const record = typeof options === 'object' && options !== null ? (options as Record<string, unknown>) : {}
  const resolveOptions: ResolveModelOptions = {}
  if (typeof record.onProgress === 'function') resolveOptions.onProgress = record.onProgress as (progress: DownloadProgress) => void
  if (record.signal instanceof AbortSignal) resolveOptions.signal = record.signal
  return downloadModel(modelDir, resolveOptions)
}
