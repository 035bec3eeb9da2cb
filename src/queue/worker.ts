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
  /**
   * Listen for cancellations from other processes on this BullMQ Relay topic (see
   * {@link cancelJob}); `false` to not listen. Default `paligemma.<queue>.cancel`.
   */
  cancelTopic?: string | false
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
 * the job's `attempts` allow. `worker.cancelJob(id)`, or {@link cancelJob} from any process,
 * aborts a running job's generation (it then fails, unretried, with `ABORT_ERR`).
 * `await worker.close()` lets running jobs finish.
 *
 * Needs the optional packages `bullmq` and `ioredis`.
 *
 * @param model - a loaded model (the worker does not dispose it).
 * @param options - Redis, the queue, concurrency and limits on job images.
 * @returns the running BullMQ worker.
 */
export async function createWorker(model: PaliGemma, options: CreateWorkerOptions): Promise<Worker<JobData, TaskResultJson>> {
  const { Worker, UnrecoverableError, Relay } = await bullmq()
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
  const queue = options.queue ?? 'paligemma'
  const connection = connectionOptions(options.connection)
  const worker = new Worker<JobData, TaskResultJson>(queue, processor, {
    ...options.workerOptions,
    connection,
    concurrency: options.concurrency ?? model.info.maxBatch,
  })
  // worker.cancelJob only reaches jobs of this process; a cancellation published on the relay
  // topic reaches whichever worker runs the job (BullMQ's "cancelling jobs on other workers").
  const topic = options.cancelTopic ?? cancelTopicOf(queue)
  if (topic !== false) {
    const relay = new Relay({ connection, name: `paligemma worker ${worker.id}` })
    worker.once('closed', () => void relay.close().catch(() => undefined))
    await relay.subscribe<CancelMessage>(topic, (message) => {
      if (typeof message.data?.jobId === 'string') worker.cancelJob(message.data.jobId, message.data.reason ?? 'cancelled')
    })
  }
  return worker
}

/** What {@link cancelJob} publishes. */
interface CancelMessage {
  jobId: string
  reason?: string
}

/** The default relay topic for cancelling jobs of `queue`. */
export function cancelTopicOf(queue: string): string {
  return `paligemma.${queue}.cancel`
}

/**
 * Cancels a running job from any process: publishes on the queue's relay topic, and the worker
 * running the job aborts its generation (the job fails with `ABORT_ERR`, not retried). A job
 * that is not running is not affected; remove it with BullMQ's `job.remove()`.
 *
 * @param target - Redis and the queue (and the topic, if the workers use another).
 * @param jobId - the job's id.
 * @param reason - why, shown in the job's `failedReason`.
 */
export async function cancelJob(target: { connection: RedisConnection; queue?: string; cancelTopic?: string }, jobId: string, reason = 'cancelled'): Promise<void> {
  const { Relay } = await bullmq()
  const relay = new Relay({ connection: connectionOptions(target.connection) })
  try {
    await relay.publish(target.cancelTopic ?? cancelTopicOf(target.queue ?? 'paligemma'), { jobId, reason } satisfies CancelMessage)
  } finally {
    await relay.close()
  }
}
