/**
 * `createWorker`: a BullMQ worker whose jobs run on a loaded model, `concurrency` at a time
 * (they share its decode steps). Inference runs on the model's native thread, so the event loop
 * stays free to renew job locks however long a generation takes.
 *
 * @packageDocumentation
 */

import type { Job, Worker, WorkerOptions } from 'bullmq'

import { taskResultJson } from '../batch/task.js'
import type { TaskResultJson } from '../batch/task.js'
import { PaliGemmaError } from '../errors.js'
import type { PaliGemma } from '../model.js'
import type { SegmentOptions } from '../tasks.js'
import { bullmq, connectionOptions } from './connection.js'
import type { RedisConnection } from './connection.js'
import { JobDataError, parseJobData, readJobImage } from './jobs.js'
import type { JobData, JobImageLimits } from './jobs.js'

/** Options of {@link createWorker}. */
export interface CreateWorkerOptions extends JobImageLimits {
  /** Redis: a `redis://host:6379` URL or BullMQ's connection options. */
  connection: RedisConnection
  /** The queue's name. Default `paligemma`. */
  queue?: string
  /** Jobs in flight at once, sharing decode steps. Default: the model's `info.maxBatch`. */
  concurrency?: number
  /** The mask decoder for `segment` jobs. Default: the model's `vaePath` load option. */
  vaePath?: string
  /** Report progress every this many tokens. Default 8. */
  progressEveryTokens?: number
  /** Further BullMQ worker options (`lockDuration`, `stalledInterval`, `limiter`, …). */
  workerOptions?: Omit<WorkerOptions, 'connection' | 'concurrency' | 'autorun'>
}

/** What a job reports through `job.progress`. */
export interface JobProgress {
  /** Tokens generated so far. */
  tokens: number
}

/**
 * Consumes jobs from a BullMQ queue on `model` (the job contract is in docs/queue.md): each
 * job's data names a task and an image, and its return value is a {@link TaskResultJson}.
 * Invalid job data fails the job at once with BullMQ's `UnrecoverableError`, whose message
 * starts with the library's error code (`ERR_INVALID_IMAGE: …`); other failures are retried as
 * the job's `attempts` allow. `worker.cancelJob(id)` aborts a running job's generation (it then
 * fails, unretried, with `ABORT_ERR`). `await worker.close()` lets running jobs finish.
 *
 * Needs the optional packages `bullmq` and `ioredis`.
 *
 * @param model - a loaded model (the worker does not dispose it).
 * @param options - Redis, the queue, concurrency and limits on job images.
 * @returns the running BullMQ worker.
 */
export async function createWorker(model: PaliGemma, options: CreateWorkerOptions): Promise<Worker<JobData, TaskResultJson>> {
  const { Worker, UnrecoverableError } = await bullmq()
  const limits: JobImageLimits = {
    ...(options.imageRoots ? { imageRoots: options.imageRoots } : {}),
    ...(options.maxImageBytes === undefined ? {} : { maxImageBytes: options.maxImageBytes }),
    ...(options.remoteImageTimeoutMs === undefined ? {} : { remoteImageTimeoutMs: options.remoteImageTimeoutMs }),
  }
  const every = options.progressEveryTokens ?? 8
  const unrecoverable = (error: PaliGemmaError): Error => new UnrecoverableError(`${error.code}: ${error.message}`)

  const processor = async (job: Job<JobData, TaskResultJson>, _token?: string, signal?: AbortSignal): Promise<TaskResultJson> => {
    try {
      const { spec, image, options: generation } = parseJobData(job.data)
      const input = await readJobImage(image, limits, signal)
      let progress: Promise<unknown> = Promise.resolve()
      const onToken = (tokens: number): void => {
        // Progress goes out in order, one Redis call at a time, never holding up the tokens.
        if (tokens % every === 0) progress = progress.then(() => job.updateProgress({ tokens } satisfies JobProgress)).catch(() => undefined)
      }
      const taskOptions: SegmentOptions & { onToken: (tokens: number) => void } = { ...(generation as SegmentOptions), onToken }
      if (signal) taskOptions.signal = signal
      if (options.vaePath !== undefined && spec.task === 'segment') taskOptions.vaePath = options.vaePath
      const result = await model.runTask(input, spec, taskOptions)
      await progress
      return taskResultJson(result)
    } catch (error) {
      if (error instanceof JobDataError) throw unrecoverable(error)
      if (error instanceof PaliGemmaError && ['ERR_INVALID_ARGUMENT', 'ERR_INVALID_IMAGE', 'ABORT_ERR'].includes(error.code)) throw unrecoverable(error)
      throw error
    }
  }
  return new Worker<JobData, TaskResultJson>(options.queue ?? 'paligemma', processor, {
    ...options.workerOptions,
    connection: connectionOptions(options.connection),
    concurrency: options.concurrency ?? model.info.maxBatch,
  })
}
