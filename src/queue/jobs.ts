/**
 * The job contract of paligemma's queue workers: what a job's data may hold, how its image is
 * read, and which failures are the job's fault (never retried) rather than the moment's.
 *
 * @packageDocumentation
 * @internal
 */

import { realpath, stat } from 'node:fs/promises'
import { isAbsolute, relative, resolve, sep } from 'node:path'

import { pickTaskSpec, taskSpecPrompt } from '../batch/task.js'
import type { TaskSpec } from '../batch/task.js'
import { PaliGemmaError } from '../errors.js'
import { checkKeys, describe, invalid, isRecord } from '../options.js'
import { HttpError } from '../serve/http.js'
import { decodeBase64, fetchImage } from '../serve/images.js'
import type { SegmentOptions } from '../tasks.js'

/** Where a job's image is: a file the worker can read, inline base64, or a URL. */
export type JobImage =
  | {
      /** A file the worker can read (see `imageRoots`). */
      path: string
    }
  | {
      /** The encoded image (JPEG, PNG, WebP, GIF, BMP) in base64. */
      base64: string
    }
  | {
      /** An `http(s)` URL, fetched only by workers started with `--allow-remote-images`. */
      url: string
    }

/** A job's data: the task, its words, the image, and generation options. */
export interface JobData extends TaskSpec {
  /** The image. */
  image: JobImage
  /** Sampling and image options of `generate` (`maxNewTokens`, `temperature`, `seed`, …). */
  options?: Omit<SegmentOptions, 'signal' | 'vaePath'>
}

/** Limits on what a job's image may be. */
export interface JobImageLimits {
  /**
   * Folders `{ path }` images must lie in (after resolving symbolic links). Default: any file
   * the worker's user can read.
   */
  imageRoots?: readonly string[]
  /** Largest image in bytes, inline or fetched. Default 20 000 000. */
  maxImageBytes?: number
  /** Fetch `{ url }` images within this time. Default: `{ url }` images are refused. */
  remoteImageTimeoutMs?: number
}

const JOB_KEYS = ['image', 'task', 'prompt', 'question', 'labels', 'lang', 'options']
const OPTION_KEYS = ['maxNewTokens', 'temperature', 'topK', 'topP', 'repetitionPenalty', 'seed', 'stop', 'slidingWindow', 'applyExifOrientation', 'maxPixels']

/** A job's fault: the worker fails it without retrying. */
export class JobDataError extends PaliGemmaError {}

/**
 * Checks a job's data and returns its task, image and options.
 *
 * @throws A {@link JobDataError} (`ERR_INVALID_ARGUMENT`) naming the bad field.
 */
export function parseJobData(data: unknown): { spec: TaskSpec; image: JobImage; options: Record<string, unknown> } {
  try {
    if (!isRecord(data)) throw invalid('data', `must be an object { task, image, … }, got ${describe(data)}`)
    checkKeys('data', data, JOB_KEYS)
    const spec = pickTaskSpec(data)
    taskSpecPrompt(spec)
    const image = data.image
    if (!isRecord(image) || Object.keys(image).length !== 1 || !['path', 'base64', 'url'].some((k) => typeof image[k] === 'string')) {
      throw invalid('image', `must be { path } or { base64 } or { url } (one string), got ${describe(image)}`)
    }
    const options = data.options ?? {}
    if (!isRecord(options)) throw invalid('options', `must be an object of generation options, got ${describe(options)}`)
    checkKeys('options', options, OPTION_KEYS)
    return { spec, image: image as JobImage, options }
  } catch (error) {
    throw error instanceof PaliGemmaError ? new JobDataError(error.code, error.message) : error
  }
}

/**
 * The bytes or path of a job's image, within `limits`. A path outside the roots, oversized
 * base64 or a refused URL is a {@link JobDataError}; a failed fetch is a plain error (retried).
 */
export async function readJobImage(image: JobImage, limits: JobImageLimits, signal: AbortSignal | undefined): Promise<string | Buffer> {
  const maxBytes = limits.maxImageBytes ?? 20_000_000
  if ('path' in image) {
    const path = resolve(image.path)
    const roots = limits.imageRoots
    if (roots && roots.length > 0) {
      const real = await realpath(path).catch(() => {
        throw new JobDataError('ERR_INVALID_IMAGE', `invalid image: no file at ${image.path}`)
      })
      const inside = await Promise.all(roots.map(async (root) => isWithin(real, await realpath(root).catch(() => resolve(root)))))
      if (!inside.includes(true)) throw new JobDataError('ERR_INVALID_ARGUMENT', `invalid argument \`image.path\`: ${image.path} is outside the worker's image roots (${roots.join(', ')})`)
      return real
    }
    const info = await stat(path).catch(() => undefined)
    if (info?.isFile() && info.size > maxBytes) throw new JobDataError('ERR_INVALID_IMAGE', `invalid image: ${image.path} is ${info.size} bytes, over the ${maxBytes}-byte limit`)
    return path
  }
  if ('base64' in image) {
    if (image.base64.length > Math.ceil(maxBytes / 3) * 4) throw new JobDataError('ERR_INVALID_IMAGE', `invalid image: the base64 image is over the ${maxBytes}-byte limit`)
    try {
      return decodeBase64(image.base64, 'image.base64')
    } catch (error) {
      throw new JobDataError('ERR_INVALID_IMAGE', `invalid image: ${(error as Error).message}`)
    }
  }
  if (limits.remoteImageTimeoutMs === undefined) {
    throw new JobDataError('ERR_INVALID_ARGUMENT', 'invalid argument `image.url`: this worker does not fetch URLs (start it with --allow-remote-images)')
  }
  if (!/^https?:\/\//i.test(image.url)) throw new JobDataError('ERR_INVALID_ARGUMENT', `invalid argument \`image.url\`: must be an http(s) URL, got ${describe(image.url)}`)
  signal?.throwIfAborted()
  try {
    return await fetchImage(image.url, 'image.url', { maxBytes, timeoutMs: limits.remoteImageTimeoutMs })
  } catch (error) {
    if (error instanceof HttpError && error.status === 413) throw new JobDataError('ERR_INVALID_IMAGE', `invalid image: ${error.message}`)
    throw error
  }
}

function isWithin(path: string, root: string): boolean {
  const rel = relative(root, path)
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel))
}
