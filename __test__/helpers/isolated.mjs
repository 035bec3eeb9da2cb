// Runs one hostile case (helpers/hostile-cases.mjs) in a child process of its own, so that a
// crash (an abort on a failed allocation) or a hang fails that test alone instead of taking the
// whole ava worker down. The child reports its result and its peak RSS on its last line, and it
// must exit by itself: a worker thread or a libuv thread stuck on a blocking file would keep it
// alive past `timeoutMs`.
import { execFile } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const child = join(dirname(fileURLToPath(import.meta.url)), 'isolated-child.mjs')

/**
 * Runs `cases[name](args)` in a fresh `node` and resolves with what it returned, plus
 * `baselineMB` (RSS once the addon is loaded), `peakMB` (the child's peak RSS) and `ms`.
 * Rejects with the child's output if it crashed, hung or failed.
 */
export function isolated(name, args = {}, { timeoutMs = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    execFile(
      process.execPath,
      ['--expose-gc', child, name, JSON.stringify(args)],
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20, env: { ...process.env, RAYON_NUM_THREADS: '2' } },
      (error, stdout, stderr) => {
        const ms = performance.now() - started
        const last = stdout.trim().split('\n').at(-1) ?? ''
        if (error) {
          const why = error.killed ? `did not exit within ${timeoutMs} ms (hung)` : `exited with ${error.code ?? error.signal}`
          reject(new Error(`case ${name} ${why}\nstdout: ${stdout.slice(-2000)}\nstderr: ${stderr.slice(-2000)}`))
          return
        }
        try {
          resolve({ ...JSON.parse(last), wallMs: ms })
        } catch {
          reject(new Error(`case ${name} printed no result\nstdout: ${stdout.slice(-2000)}\nstderr: ${stderr.slice(-2000)}`))
        }
      },
    )
  })
}
