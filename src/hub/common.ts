/**
 * Shared pieces of the hub download: limits, the cache folders, error constructors and the
 * per-download session.
 *
 * @internal
 */

import { homedir } from 'node:os'
import { join } from 'node:path'
import { AbortError, PaliGemmaError } from '../errors.js'

/** The weights of a checkpoint: one file, or an index naming its shards. */
export const WEIGHTS = 'model.safetensors'
/** The index of a sharded checkpoint. */
export const WEIGHTS_INDEX = 'model.safetensors.index.json'

/** Download attempts per file (the first plus resumes after a dropped connection). */
export const ATTEMPTS = 5
/** A response that sends nothing for this long is abandoned and retried. */
export const STALL_MS = 60_000
/** The shortest interval between two progress reports. */
export const PROGRESS_INTERVAL_MS = 100

/** Whether the environment variable `name` is set to 1, true, yes or on. */
export function envFlag(name: string): boolean {
  return /^(1|true|yes|on)$/i.test(process.env[name] ?? '')
}

/** The Hugging Face home folder: `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
export function hfHome(): string {
  if (process.env.HF_HOME) return process.env.HF_HOME
  const xdg = process.env.XDG_CACHE_HOME || join(homedir(), '.cache')
  return join(xdg, 'huggingface')
}

/** The folder of one repository in the cache. */
export function repoFolder(cacheDir: string, id: string): string {
  return join(cacheDir, `models--${id.replace('/', '--')}`)
}

/** An `ERR_MODEL_LOAD` error, with its cause when there is one. */
export function loadError(message: string, cause?: unknown): PaliGemmaError {
  return new PaliGemmaError('ERR_MODEL_LOAD', message, cause === undefined ? undefined : { cause })
}

/** The {@link AbortError} for an aborted `signal`, carrying its reason as the cause. */
export function abortError(signal: AbortSignal): AbortError {
  return new AbortError(undefined, signal.reason === undefined ? undefined : { cause: signal.reason })
}

/** Whether `revision` is a full 40-hex-digit commit hash (then no ref is written). */
export function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision)
}

/** A file's hub metadata, from the headers of `HEAD /<id>/resolve/<rev>/<file>`. */
export interface FileMeta {
  file: string
  commit: string
  /** The blob id: the sha256 of an LFS file, the git blob sha1 of a small one. */
  etag: string
  size: number
  /** Where the bytes are: the resolve URL, or the LFS redirect's target. */
  url: string
}

/** What a download needs to reach the hub. */
export interface Session {
  id: string
  endpoint: string
  token: string | undefined
  signal: AbortSignal | undefined
}
