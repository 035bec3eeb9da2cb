/**
 * Reaching BullMQ and Redis: the optional `bullmq` package loaded on first use (so the main
 * package needs neither), and `redis://` URLs as connection options.
 *
 * @packageDocumentation
 * @internal
 */

import type { ConnectionOptions } from 'bullmq'

import { PaliGemmaError } from '../errors.js'

/** The `bullmq` module. */
export type BullMQ = typeof import('bullmq')

let loaded: Promise<BullMQ> | undefined

/** Imports `bullmq`, or says how to install it. */
export function bullmq(): Promise<BullMQ> {
  loaded ??= import('bullmq').catch((error: Error) => {
    loaded = undefined
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `the queue needs the bullmq and ioredis packages: npm install bullmq ioredis (${error.message})`)
  })
  return loaded
}

/** Where Redis is: a `redis://` or `rediss://` URL, or BullMQ's connection options. */
export type RedisConnection = string | ConnectionOptions

/**
 * BullMQ connection options for a URL: `redis[s]://[user:password@]host[:port][/db]`.
 *
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` for anything else.
 */
export function connectionOptions(connection: RedisConnection): ConnectionOptions {
  if (typeof connection !== 'string') return connection
  let url: URL
  try {
    url = new URL(connection)
  } catch {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`redis\`: not a URL: ${JSON.stringify(connection)}; expected redis://host:6379`)
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`redis\`: expected a redis:// or rediss:// URL, got ${url.protocol}`)
  }
  const db = url.pathname.length > 1 ? Number(url.pathname.slice(1)) : undefined
  if (db !== undefined && !Number.isInteger(db)) throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`redis\`: the database in ${url.pathname} is not a number`)
  return {
    host: url.hostname || '127.0.0.1',
    port: url.port ? Number(url.port) : 6379,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    ...(db === undefined ? {} : { db }),
    ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
    // BullMQ workers block on Redis; ioredis must not give up on their commands.
    maxRetriesPerRequest: null,
  }
}
