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

import { readFileSync, statSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { AbortError, PaliGemmaError } from './errors.js'
import type { LoadProgress } from './types.js'
import { WEIGHTS, WEIGHTS_INDEX, abortError, envFlag, hfHome, isCommitHash, loadError, repoFolder } from './hub/common.js'
import type { FileMeta, Session } from './hub/common.js'
import { headFile } from './hub/http.js'
import { Progress, downloadBlob } from './hub/blob.js'
import { blobReady, cachedSnapshot, linkSnapshot, shardsOf, writeRef } from './hub/snapshot.js'

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

const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]*[A-Za-z0-9_]$/

/**
 * Whether `value` has the shape of a hub model id, `owner/name` (one slash, letters, digits,
 * `-`, `_`, `.`; no `..`). Says nothing about whether the repository exists.
 */
export function isHubModelId(value: string): boolean {
  return HUB_ID.test(value) && !value.includes('..')
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
