// Garbage collection, RSS and thread helpers for the reliability tests.
import { readdirSync, readFileSync } from 'node:fs'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

import { sleep } from './fixtures.mjs'

/** `global.gc` (ava runs node with --expose-gc, see package.json), else one obtained via V8 flags. */
export const gc = (() => {
  if (typeof globalThis.gc === 'function') return globalThis.gc
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc')
})()

export const MB = 1024 * 1024

/**
 * RSS after full GCs and a few event-loop turns (napi finalizers and the worker threads they
 * wake run between turns), in bytes.
 */
export async function settledRss(rounds = 4) {
  for (let i = 0; i < rounds; i++) {
    gc()
    await sleep(20)
  }
  return process.memoryUsage().rss
}

/** Names of this process's threads (Linux; empty elsewhere). */
export function threadNames() {
  try {
    return readdirSync('/proc/self/task').map((tid) => {
      try {
        return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()
      } catch {
        return ''
      }
    })
  } catch {
    return []
  }
}

/** Number of paligemma model threads (`pgm<id>-worker`, `pgm<id>-<i>`) alive now. */
export function modelThreadCount() {
  return threadNames().filter((name) => /^pgm\d+-/.test(name)).length
}

/** Polls `condition` every 10 ms (running GCs when `collect`) until it holds or `ms` passes. */
export async function waitFor(condition, ms = 3000, collect = false) {
  const end = performance.now() + ms
  while (performance.now() < end) {
    if (collect) gc()
    if (await condition()) return true
    await sleep(10)
  }
  return condition()
}

export const fmtMB = (bytes) => `${(bytes / MB).toFixed(1)} MB`
