/**
 * `paligemma serve`: loads the model, starts the HTTP server, prints its URL, and on Ctrl-C or
 * SIGTERM stops accepting connections, lets open requests end, and disposes the model.
 *
 * @internal
 */

import { statSync } from 'node:fs'
import { basename, resolve } from 'node:path'

import { serve } from '../serve/server.js'
import type { Parsed } from './args.js'
import { UsageError, err, integerAtLeast, numberOption, out, str } from './args.js'
import { openModel, stopRequested } from './loading.js'

/** The model's id: a hub id as given, or a folder's name. */
function modelId(model: string): string {
  return /^[\w.-]+\/[\w.-]+$/.test(model) && !model.startsWith('.') ? model : basename(resolve(model))
}

function port(values: Parsed['values']): number {
  const text = str(values, 'port') ?? '8080'
  const n = Number(text)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UsageError(`--port must be an integer in [0, 65535], got ${JSON.stringify(text)}`)
  return n
}

/** Runs the server until interrupted; resolves with the exit status. */
export async function runServe(args: Parsed): Promise<number> {
  const { values } = args
  const model = str(values, 'model') ?? process.env.PALIGEMMA_MODEL
  if (!model) throw new UsageError('missing required option --model <dir|hub id> (or set PALIGEMMA_MODEL)')
  const listenPort = port(values)
  const maxBodyBytes = integerAtLeast(values, 'max-body', 1)
  const apiKey = str(values, 'api-key') ?? process.env.PALIGEMMA_API_KEY
  const maxQueue = integerAtLeast(values, 'max-queue', 0)
  const shutdownMs = (integerAtLeast(values, 'shutdown-timeout', 0) ?? 10) * 1000
  const cors = str(values, 'cors')
  const vaePath = str(values, 'vae') ?? (process.env.PALIGEMMA_VAE || undefined)
  if (vaePath !== undefined && !statSync(vaePath, { throwIfNoEntry: false })?.isFile()) {
    throw new UsageError(`--vae: no file at ${vaePath} (convert vae-oid.npz with convert-vae)`)
  }
  const remoteTimeout = integerAtLeast(values, 'remote-image-timeout', 0)
  if (remoteTimeout !== undefined && values['allow-remote-images'] !== true) throw new UsageError('--remote-image-timeout needs --allow-remote-images')
  const remoteImages = values['allow-remote-images'] === true ? { timeoutMs: (remoteTimeout ?? 10) * 1000 } : undefined
  const prefillShare = numberOption(values, 'prefill-share', false)
  if (prefillShare !== undefined && !(prefillShare >= 0 && prefillShare <= 1000)) throw new UsageError('--prefill-share must be a number from 0 to 1000')
  const loaded = await openModel(values, prefillShare === undefined ? {} : { prefillShare })
  const running = await serve(loaded, {
    modelId: modelId(model),
    host: str(values, 'host') ?? '127.0.0.1',
    port: listenPort,
    ...(apiKey ? { apiKey } : {}),
    ...(maxBodyBytes === undefined ? {} : { maxBodyBytes }),
    ...(maxQueue === undefined ? {} : { maxQueue }),
    ...(cors === undefined ? {} : { cors }),
    ...(vaePath === undefined ? {} : { vaePath }),
    ...(remoteImages === undefined ? {} : { remoteImages }),
    ui: values['no-ui'] !== true,
  })
  out.write(`paligemma: serving ${modelId(model)} at ${running.url}${values['no-ui'] === true ? '' : ` (open ${running.url}/ in a browser)`}\n`)
  await stopRequested()
  err.write('paligemma: shutting down\n')
  await running.close(shutdownMs)
  await loaded.dispose()
  return 0
}
