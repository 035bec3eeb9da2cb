// Runs the compiled CLI (dist/src/cli.js) in a child process, bounded in time.
import { spawn } from 'node:child_process'
import { join } from 'node:path'

import { repo } from './fixtures.mjs'

export const CLI = join(repo, 'dist', 'src', 'cli.js')

/** `{ code, signal, stdout, stderr }` of `node dist/src/cli.js ...args`. */
export function runCli(args, { env = {}, cwd = repo, timeoutMs = 120_000, input } = {}) {
  return runNode([CLI, ...args], { env, cwd, timeoutMs, input })
}

/** `{ code, signal, stdout, stderr }` of `node ...args`, killed after `timeoutMs`. */
export function runNode(args, { env = {}, cwd = repo, timeoutMs = 120_000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd,
      env: { ...process.env, PALIGEMMA_NO_CUDA: '1', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
    child.stdin.end(input)
  })
}
