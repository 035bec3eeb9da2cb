/**
 * The producer's side of the queue: adding jobs (`enqueueJobs`) and collecting what the workers
 * returned (`collectResults`).
 *
 * @packageDocumentation
 */

import { createHash } from 'node:crypto'

import type { Job, JobsOptions } from 'bullmq'

import type { TaskResultJson } from '../batch/task.js'
import { bullmq, connectionOptions } from './connection.js'
import type { RedisConnection } from './connection.js'
import { parseJobData } from './jobs.js'
import type { JobData } from './jobs.js'

/** Where the queue is. */
export interface QueueTarget {
  /** Redis: a `redis://host:6379` URL or BullMQ's connection options. */
  connection: RedisConnection
  /** The queue's name. Default `paligemma`. */
  queue?: string
}

/** Options of {@link enqueueJobs}. */
export interface EnqueueOptions extends QueueTarget {
  /**
   * BullMQ options for every job. Default: 3 attempts with exponential backoff from 1 s, and
   * finished jobs kept (their results are what {@link collectResults} reads).
   */
  jobOptions?: JobsOptions
}

/** What {@link enqueueJobs} did. */
export interface EnqueueReport {
  /** Jobs sent. */
  added: number
  /** Their ids, in order. */
  ids: string[]
}

/**
 * A job's id: a hash of its data, so that enqueueing the same image and task again while the
 * first job is still in the queue adds nothing (BullMQ ignores a known id).
 */
export function jobId(data: JobData): string {
  return createHash('sha256').update(JSON.stringify(data)).digest('hex').slice(0, 32)
}

/**
 * Adds jobs to the queue, checking each against the job contract first (a bad one throws
 * before anything is sent). Sends them in bulks of 500.
 *
 * @param target - Redis and the queue, and BullMQ job options.
 * @param jobs - job data, an iterable or async iterable.
 * @returns how many were sent, and their ids.
 * @throws A `PaliGemmaError` `ERR_INVALID_ARGUMENT` for job data outside the contract.
 */
export async function enqueueJobs(target: EnqueueOptions, jobs: Iterable<JobData> | AsyncIterable<JobData>): Promise<EnqueueReport> {
  const { Queue } = await bullmq()
  const queue = new Queue<JobData, TaskResultJson>(target.queue ?? 'paligemma', { connection: connectionOptions(target.connection) })
  const opts: JobsOptions = { attempts: 3, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: false, removeOnFail: false, ...target.jobOptions }
  const ids: string[] = []
  let bulk: { name: string; data: JobData; opts: JobsOptions }[] = []
  const flush = async (): Promise<void> => {
    if (bulk.length > 0) await queue.addBulk(bulk)
    bulk = []
  }
  try {
    for await (const data of jobs) {
      parseJobData(data)
      const id = jobId(data)
      ids.push(id)
      bulk.push({ name: data.task ?? 'caption', data, opts: { ...opts, jobId: id } })
      if (bulk.length === 500) await flush()
    }
    await flush()
  } finally {
    await queue.close()
  }
  return { added: ids.length, ids }
}

/** One finished job, as {@link collectResults} yields it. */
export type CollectedJob =
  | {
      /** The job's id. */
      id: string
      /** Its data. */
      data: JobData
      /** What the worker returned. */
      result: TaskResultJson
      /** Absent on success. */
      error?: undefined
    }
  | {
      /** The job's id. */
      id: string
      /** Its data. */
      data: JobData
      /** Absent on failure. */
      result?: undefined
      /** Why it failed for good: the code (`ERR_INVALID_IMAGE`, …, or `ERR_JOB_FAILED`) and message. */
      error: {
        /** The library's error code (`ERR_INVALID_IMAGE`, …), or `ERR_JOB_FAILED` for other failures. */
        code: string
        /** What went wrong. */
        message: string
      }
    }

/** Options of {@link collectResults}. */
export interface CollectOptions extends QueueTarget {
  /** Ids to leave out (already collected). */
  skip?: ReadonlySet<string>
  /** Keep going until no job is waiting, delayed or running, polling this often (ms). Default: one pass. */
  waitIntervalMs?: number
  /** Remove each job from Redis once yielded. Default false. */
  remove?: boolean
  /** Stops waiting. */
  signal?: AbortSignal
}

/**
 * Yields the queue's finished jobs (completed, and failed for good), each once. With
 * `waitIntervalMs`, keeps polling until nothing is left to run.
 *
 * @param options - Redis, the queue, ids to skip, and whether to wait and remove.
 * @returns an async iterator of {@link CollectedJob}s.
 */
export async function* collectResults(options: CollectOptions): AsyncGenerator<CollectedJob, void, undefined> {
  const { Queue } = await bullmq()
  const queue = new Queue<JobData, TaskResultJson>(options.queue ?? 'paligemma', { connection: connectionOptions(options.connection) })
  const seen = new Set(options.skip ?? [])
  try {
    for (;;) {
      // Counted before the pass: a job that finishes during it is picked up by the next one.
      const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'waiting-children')
      const pending = Object.values(counts).reduce((a, b) => a + b, 0)
      for (const state of ['completed', 'failed'] as const) {
        for (let start = 0; ; start += 500) {
          const jobs = await queue.getJobs([state], start, start + 499, true)
          for (const job of jobs) {
            if (!job?.id || seen.has(job.id)) continue
            seen.add(job.id)
            yield finishedJob(job, state)
            if (options.remove) await job.remove().catch(() => undefined)
          }
          if (jobs.length < 500) break
        }
      }
      if (options.waitIntervalMs === undefined || pending === 0 || options.signal?.aborted) return
      await new Promise((r) => setTimeout(r, options.waitIntervalMs))
    }
  } finally {
    await queue.close()
  }
}

/** A finished job; BullMQ keeps a job that will be retried out of the failed set. */
function finishedJob(job: Job<JobData, TaskResultJson>, state: 'completed' | 'failed'): CollectedJob {
  const id = job.id as string
  if (state === 'completed') return { id, data: job.data, result: job.returnvalue }
  const reason = job.failedReason ?? 'failed'
  const match = /^([A-Z][A-Z_]+): ([\s\S]*)$/.exec(reason)
  return { id, data: job.data, error: match ? { code: match[1]!, message: match[2]! } : { code: 'ERR_JOB_FAILED', message: reason } }
}
