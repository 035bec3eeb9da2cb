/**
 * paligemma on BullMQ and Redis: workers that run jobs on a loaded model, and the producer's
 * side, for spreading a collection of images over many machines. Needs the optional packages
 * `bullmq` and `ioredis` (`npm install bullmq ioredis`). See docs/queue.md for the job contract.
 *
 * ```ts
 * import { PaliGemma } from 'paligemma'
 * import { createWorker, enqueueJobs } from 'paligemma/queue'
 * const model = await PaliGemma.load('/models/paligemma2-3b-mix-224')
 * const worker = await createWorker(model, { connection: 'redis://127.0.0.1:6379' })
 * await enqueueJobs({ connection: 'redis://127.0.0.1:6379' }, [{ task: 'caption', image: { path: '/data/cat.jpg' } }])
 * ```
 *
 * @packageDocumentation
 */

export { cancelJob, cancelTopicOf, createWorker } from './src/queue/worker.js'
export type { CreateWorkerOptions, JobProgress } from './src/queue/worker.js'
export { collectResults, enqueueJobs, jobId } from './src/queue/producer.js'
export type { CollectOptions, CollectedJob, EnqueueOptions, EnqueueReport, QueueTarget } from './src/queue/producer.js'
export { connectionOptions } from './src/queue/connection.js'
export type { RedisConnection } from './src/queue/connection.js'
export type { JobData, JobImage, JobImageLimits } from './src/queue/jobs.js'
export type { TaskName, TaskResultJson, TaskSpec } from './src/batch/task.js'
