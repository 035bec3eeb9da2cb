// Machine state for the benchmark harness: CPU accounting, waiting for a quiet machine, and
// what the report says about the machine and the versions.

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ROOT, log, round, sh, sleep } from './common.mjs'

/** CPU jiffies of the whole machine (USER_HZ = 100). */
export function cpuStat() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = f
  return { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal, t: performance.now() }
}

/** Cores busy (and stolen by the hypervisor) between two samples. */
export function cpuDelta(a, b) {
  const total = b.busy - a.busy + (b.idle - a.idle) + (b.steal - a.steal)
  const ncpu = os.cpus().length
  return {
    busyCores: total > 0 ? ((b.busy - a.busy) / total) * ncpu : 0,
    stealCores: total > 0 ? ((b.steal - a.steal) / total) * ncpu : 0,
    busyCpuS: (b.busy - a.busy) / 100,
    wallS: (b.t - a.t) / 1e3,
  }
}


export async function busyOver(ms) {
  const a = cpuStat()
  await sleep(ms)
  return cpuDelta(a, cpuStat())
}

/**
 * Waits until the machine is quiet: the 1-minute load average under `maxLoad` (when given) and
 * under `maxBusy` cores busy, for `holdS` seconds in a row; gives up after `capS` seconds.
 */
export async function waitQuiet({ maxLoad, maxBusy, holdS, capS, stepS }) {
  const start = performance.now()
  let quietFor = 0
  let lastMsg = 0
  for (;;) {
    const d = await busyOver(stepS * 1e3)
    const la = os.loadavg()[0]
    const quiet = d.busyCores < maxBusy && (maxLoad === undefined || la < maxLoad)
    quietFor = quiet ? quietFor + stepS : 0
    const waited = (performance.now() - start) / 1e3
    if (quietFor >= holdS) return { waitedS: round(waited, 0), quiet: true, loadavg: round(la, 2) }
    if (waited >= capS) {
      log(`machine still busy after ${capS} s (load ${la.toFixed(2)}, ${d.busyCores.toFixed(2)} cores busy): measuring anyway`)
      return { waitedS: round(waited, 0), quiet: false, loadavg: round(la, 2) }
    }
    if (waited - lastMsg >= 30) {
      lastMsg = waited
      log(`waiting for a quiet machine: load ${la.toFixed(2)}, ${d.busyCores.toFixed(2)} cores busy, quiet for ${quietFor} s of ${holdS}`)
    }
  }
}

export function machineInfo() {
  const lscpu = sh('lscpu', []) ?? ''
  const field = (name) => (lscpu.match(new RegExp(`^${name}:\\s*(.+)$`, 'm')) ?? [])[1]
  return {
    cpu: field('Model name') ?? os.cpus()[0]?.model,
    cores: Number(field('Core\\(s\\) per socket') ?? 0) * Number(field('Socket\\(s\\)') ?? 1) || os.cpus().length,
    threads_per_core: Number(field('Thread\\(s\\) per core') ?? 1),
    logical_cpus: os.cpus().length,
    memory_gb: round(os.totalmem() / 1e9, 1),
    hypervisor: field('Hypervisor vendor') ?? null,
    kernel: os.release(),
  }
}

export function versions() {
  const lock = fs.readFileSync(path.join(ROOT, 'Cargo.lock'), 'utf8')
  const candle = (lock.match(/name = "candle-core"\nversion = "([^"]+)"/) ?? [])[1]
  const git = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', 'crates'])
  return { rustc: sh('rustc', ['--version']), candle, node: process.version, git: git ? `${git}${dirty ? ' (crates/ modified)' : ''}` : null }
}
