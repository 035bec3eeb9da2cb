/**
 * `paligemma worker`, `enqueue`, `results` and `cancel`: a collection of images spread over machines
 * through a BullMQ queue on Redis.
 *
 * @internal
 */

import { delimiter, resolve } from 'node:path'
import { readFile } from 'node:fs/promises'

import { listImages } from '../batch/inputs.js'
import { JsonlWriter } from '../batch/jsonl.js'
import { cancelJob, createWorker } from '../queue/worker.js'
import { collectResults, enqueueJobs } from '../queue/producer.js'
import type { JobData } from '../queue/jobs.js'
import { MODEL_OPTIONS, OUTPUT_OPTIONS, SAMPLING_OPTIONS, UsageError, err, flag, integerAtLeast, out, required, samplingOptions, str } from './args.js'
import type { Command, Parsed } from './args.js'
import { TASK_HELP, TASK_OPTIONS, taskFromOptions } from './batch.js'
import { interrupt, openModel, stopRequested } from './loading.js'

const QUEUE_OPTIONS: Command['options'] = { redis: { type: 'string' }, queue: { type: 'string' } }
const QUEUE_HELP =
  '      --redis <url>           redis://[user:password@]host:port[/db] (default $REDIS_URL or redis://127.0.0.1:6379)\n' +
  '      --queue <name>          the BullMQ queue (default paligemma)\n'

function target(values: Parsed['values']): { connection: string; queue: string } {
  return { connection: str(values, 'redis') ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', queue: str(values, 'queue') ?? 'paligemma' }
}

async function runWorker(args: Parsed): Promise<number> {
  const { values } = args
  const { connection, queue } = target(values)
  const concurrency = integerAtLeast(values, 'concurrency', 1)
  const lockDuration = integerAtLeast(values, 'lock-duration', 1)
  const roots = str(values, 'image-roots')
  const remoteTimeout = integerAtLeast(values, 'remote-image-timeout', 1)
  if (remoteTimeout !== undefined && !flag(values, 'allow-remote-images')) throw new UsageError('--remote-image-timeout needs --allow-remote-images')
  const vaePath = str(values, 'vae') ?? (process.env.PALIGEMMA_VAE || undefined)
  const model = await openModel(values)
  const worker = await createWorker(model, {
    connection,
    queue,
    ...(concurrency === undefined ? {} : { concurrency }),
    ...(roots === undefined ? {} : { imageRoots: roots.split(delimiter).filter(Boolean).map((r) => resolve(r)) }),
    ...(flag(values, 'allow-remote-images') ? { remoteImageTimeoutMs: (remoteTimeout ?? 10) * 1000 } : {}),
    ...(vaePath === undefined ? {} : { vaePath }),
    // The stalled-job check runs as often as a lock lasts: a killed worker's jobs go back to
    // the queue within about two lock durations.
    ...(lockDuration === undefined ? {} : { workerOptions: { lockDuration, stalledInterval: lockDuration } }),
  })
  worker.on('error', (error) => err.write(`paligemma: worker: ${error.message}\n`))
  await worker.waitUntilReady()
  out.write(`paligemma: worker on queue ${queue} at ${connection.replace(/\/\/[^@/]*@/, '//***@')}, ${concurrency ?? model.info.maxBatch} jobs at a time\n`)
  await stopRequested()
  err.write('paligemma: finishing the running jobs\n')
  await worker.close()
  await model.dispose()
  return 0
}

async function runEnqueue(args: Parsed): Promise<number> {
  const { values, positionals } = args
  if (positionals.length === 0) throw new UsageError('enqueue needs the images: <folder|glob|list.txt|image>...')
  const spec = taskFromOptions(values)
  const options = samplingOptions(values)
  const inline = flag(values, 'inline')
  const paths = await listImages(positionals)
  async function* jobs(): AsyncGenerator<JobData> {
    for (const path of paths) {
      const image = inline ? { base64: (await readFile(path)).toString('base64') } : { path: resolve(path) }
      yield { ...spec, image, ...(Object.keys(options).length > 0 ? { options } : {}) }
    }
  }
  const report = await enqueueJobs(target(values), jobs())
  out.write(`paligemma: enqueued ${report.added} jobs on ${target(values).queue}\n`)
  return 0
}

async function runResults(args: Parsed): Promise<number> {
  const { values } = args
  const outPath = required(str(values, 'out'), 'option --out <results.jsonl>')
  const { writer, done } = await JsonlWriter.open(outPath, 'id')
  let written = 0
  let failed = 0
  try {
    for await (const job of collectResults({ ...target(values), skip: done, signal: interrupt.signal, remove: flag(values, 'remove'), ...(flag(values, 'wait') ? { waitIntervalMs: 1000 } : {}) })) {
      const image = job.data.image
      const head = { id: job.id, ...('path' in image ? { path: image.path } : 'url' in image ? { url: image.url } : {}), task: job.data.task ?? 'caption' }
      if (job.error) failed++
      writer.write(job.error ? { ...head, error: job.error } : { ...head, ...job.result })
      written++
    }
  } finally {
    writer.close()
  }
  err.write(`paligemma: ${written} results written to ${outPath} (${failed} failed jobs), ${done.size} were there already\n`)
  return interrupt.signal.aborted ? 130 : failed > 0 ? 1 : 0
}

async function runCancel(args: Parsed): Promise<number> {
  if (args.positionals.length === 0) throw new UsageError('cancel needs the ids of the jobs to cancel')
  const where = target(args.values)
  for (const id of args.positionals) await cancelJob(where, id, str(args.values, 'reason') ?? 'cancelled from the command line')
  out.write(`paligemma: asked the workers of ${where.queue} to cancel ${args.positionals.length} job(s)\n`)
  return 0
}

/** `paligemma worker`, `enqueue`, `results` and `cancel`. */
export const queueCommands: Record<string, Command> = {
  worker: {
    summary: 'Run jobs from a BullMQ queue on Redis (needs npm install bullmq ioredis)',
    usage: 'worker --model <dir|id> [--redis redis://127.0.0.1:6379] [--queue paligemma] [--concurrency N]',
    details:
      'Jobs: {task, image: {path}|{base64}|{url}, prompt?, question?, labels?, lang?, options?} (docs/queue.md).\n' +
      '  SIGTERM or Ctrl-C lets running jobs finish, then exits 0; a killed worker\'s jobs go to another.\n' +
      QUEUE_HELP +
      "      --concurrency <n>       jobs in flight, sharing decode steps (default: the model's batch)\n" +
      '      --image-roots <dirs>    {path} images must lie in these folders (separated by ' + delimiter + '); default: any file\n' +
      '      --allow-remote-images   fetch {url} images (within --remote-image-timeout seconds, default 10)\n' +
      '      --vae <file>            the segmentation VAE for segment jobs (default: $PALIGEMMA_VAE)\n' +
      '      --lock-duration <ms>    BullMQ lock and stalled-check interval (default 30000)',
    options: {
      ...MODEL_OPTIONS,
      ...QUEUE_OPTIONS,
      concurrency: { type: 'string' },
      'image-roots': { type: 'string' },
      'allow-remote-images': { type: 'boolean' },
      'remote-image-timeout': { type: 'string' },
      vae: { type: 'string' },
      'lock-duration': { type: 'string' },
      ...OUTPUT_OPTIONS,
    },
    positionals: false,
    run: runWorker,
  },
  enqueue: {
    summary: 'Add a job per image to a BullMQ queue',
    usage: 'enqueue [--redis <url>] [--queue paligemma] [--task caption] [--prompt <text>] [--inline] <folder|glob|list.txt|image>...',
    details:
      'Each image becomes a job {task, image: {path} (absolute), ...}; --inline sends the bytes as base64 instead,\n' +
      '  for workers without the files. A job\'s id is a hash of its data: enqueueing it again adds nothing.\n' +
      QUEUE_HELP +
      TASK_HELP +
      '      --inline                put the image bytes in the job',
    options: { ...QUEUE_OPTIONS, ...TASK_OPTIONS, inline: { type: 'boolean' }, ...SAMPLING_OPTIONS, ...OUTPUT_OPTIONS },
    positionals: true,
    run: runEnqueue,
  },
  results: {
    summary: 'Write the finished jobs of a BullMQ queue to a JSON-lines file',
    usage: 'results [--redis <url>] [--queue paligemma] --out results.jsonl [--wait] [--remove]',
    details:
      'One line per finished job: id, path or url, task, and the result (text, tokenIds, finishReason, detections,\n' +
      '  segmentations, timings) or error {code, message}. Jobs already in --out are skipped.\n' +
      QUEUE_HELP +
      '      --out <file>            the JSON-lines file (appended to)\n' +
      '      --wait                  keep collecting until no job is waiting or running\n' +
      '      --remove                remove each collected job from Redis',
    options: { ...QUEUE_OPTIONS, out: { type: 'string', short: 'o' }, wait: { type: 'boolean' }, remove: { type: 'boolean' }, ...OUTPUT_OPTIONS },
    positionals: false,
    run: runResults,
  },
  cancel: {
    summary: 'Cancel running jobs of a BullMQ queue, on whichever worker runs them',
    usage: 'cancel [--redis <url>] [--queue paligemma] [--reason <text>] <jobId>...',
    details:
      'Publishes on the queue\'s relay topic (paligemma.<queue>.cancel); the worker running a job aborts its generation and\n' +
      '  the job fails with ABORT_ERR, not retried. Jobs that are not running are not affected.\n' +
      QUEUE_HELP +
      '      --reason <text>         kept in the job\'s failedReason',
    options: { ...QUEUE_OPTIONS, reason: { type: 'string' }, ...OUTPUT_OPTIONS },
    positionals: true,
    run: runCancel,
  },
}
