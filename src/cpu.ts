/**
 * What the x64 addon needs from the CPU. It is compiled with AVX2, FMA and F16C
 * (`.cargo/config.toml`: candle's kernels choose their SIMD paths at compile time), so on an
 * older x86-64 CPU its first vector instruction would kill the process with SIGILL. The check
 * runs before the addon is loaded and turns that into an `ERR_DEVICE_UNAVAILABLE` error.
 *
 * @packageDocumentation
 * @internal
 */

import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

/** The instruction sets of the x64 builds, as Linux's `/proc/cpuinfo` names them. */
export const REQUIRED_X64_FEATURES = ['avx2', 'fma', 'f16c'] as const

/** The features of `REQUIRED_X64_FEATURES` missing from a `/proc/cpuinfo` text. */
export function missingFromCpuinfo(cpuinfo: string): string[] {
  const flags = new Set(/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.trim().split(/\s+/) ?? [])
  return REQUIRED_X64_FEATURES.filter((f) => !flags.has(f))
}

/**
 * The required features this CPU lacks: `[]` when it has them all (or is not x64), `undefined`
 * when there is no way to tell (Windows, or an unreadable `/proc/cpuinfo`); the addon is then
 * loaded and trusted.
 */
export function missingCpuFeatures(): string[] | undefined {
  if (process.arch !== 'x64') return []
  try {
    // PALIGEMMA_CPUINFO names another file to read: qemu-user, for one, shows the host's flags
    // whatever CPU it emulates (the tests use it to stand in for an old CPU).
    if (process.platform === 'linux') return missingFromCpuinfo(readFileSync(process.env.PALIGEMMA_CPUINFO || '/proc/cpuinfo', 'utf8'))
    if (process.platform === 'darwin') {
      const text = execFileSync('sysctl', ['-n', 'machdep.cpu.features', 'machdep.cpu.leaf7_features'], { encoding: 'utf8' })
      const flags = new Set(text.toLowerCase().split(/\s+/))
      return REQUIRED_X64_FEATURES.filter((f) => !flags.has(f))
    }
  } catch {
    // No way to tell: load the addon.
  }
  return undefined
}
