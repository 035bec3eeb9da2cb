// Event-loop delay probes for the reliability tests.
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`

/**
 * The JS (main) thread's scheduler counters, in ms: `cpu` = time on a CPU, `wait` = time spent
 * runnable but waiting for a CPU. Linux only (`undefined` elsewhere or when unavailable).
 */
export function mainThreadSchedstat() {
  try {
    const [cpu, wait] = readFileSync(SCHEDSTAT, 'utf8').trim().split(/\s+/).map(Number)
    if (!Number.isFinite(cpu) || !Number.isFinite(wait)) return undefined
    return { cpu: cpu / 1e6, wait: wait / 1e6 }
  } catch {
    return undefined
  }
}

/**
 * Starts measuring how long the event loop is blocked, two ways:
 *
 * - `perf_hooks.monitorEventLoopDelay({ resolution: 10 })`: a libuv timer due every 10 ms records
 *   the interval between its ticks, so a tick delayed by d ms records 10 + d ms; its longest
 *   block is `max − 10 ms` (`histogramBlockedMs`).
 * - A `setInterval(…, 5)` probe that, at each tick, records the wall-clock gap since the previous
 *   tick and how long the JS thread waited on the OS run queue during that gap (Linux
 *   `/proc/<pid>/task/<pid>/schedstat`). `blockedMs` is the longest `gap − 5 ms − run-queue wait`:
 *   the time the event loop could not run its timer *for reasons inside this process* (JS work,
 *   native work on the JS thread, GC). Time the OS kept the thread off every CPU while it was
 *   runnable — other processes on a shared machine — is not something the library can control,
 *   so it is reported separately (`rawBlockedMs` = longest `gap − 5 ms`).
 *
 * Returns `stop()`, which ends the measurement and returns the figures.
 */
export function measureEventLoop() {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  const interval = 5
  let last = performance.now()
  let lastStat = mainThreadSchedstat()
  let rawBlockedMs = 0
  let blockedMs = 0
  let maxRunQueueWaitMs = 0
  const probe = setInterval(() => {
    const now = performance.now()
    const stat = mainThreadSchedstat()
    const gap = now - last - interval
    const wait = stat && lastStat ? stat.wait - lastStat.wait : 0
    rawBlockedMs = Math.max(rawBlockedMs, gap)
    blockedMs = Math.max(blockedMs, gap - wait)
    maxRunQueueWaitMs = Math.max(maxRunQueueWaitMs, wait)
    last = now
    lastStat = stat
  }, interval)
  histogram.enable()
  return () => {
    histogram.disable()
    clearInterval(probe)
    return {
      schedstat: lastStat !== undefined,
      blockedMs,
      rawBlockedMs,
      maxRunQueueWaitMs,
      histogramMaxMs: histogram.max / 1e6,
      histogramBlockedMs: histogram.max / 1e6 - 10,
      histogramP99Ms: histogram.percentile(99) / 1e6,
      histogramMeanMs: histogram.mean / 1e6,
      ticks: histogram.count,
    }
  }
}
