/**
 * Progress bars and byte/count formatting for the command line (stderr, TTY only).
 *
 * @internal
 */

import { err, flag } from './args.js'
import type { Parsed } from './args.js'

/** Whether progress bars are drawn: stderr is a terminal and neither --json nor --quiet. */
export function showProgress(values: Parsed['values']): boolean {
  return err.isTTY === true && !flag(values, 'json') && !flag(values, 'quiet')
}

/** Decimal sizes: `512 B`, `1.50 GB`, `11.7 GB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = 0
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000
    unit++
  }
  return `${value.toFixed(unit === 0 ? 0 : value < 10 ? 2 : 1)} ${units[unit]}`
}

/** Counts: `950`, `1.2 k`, `2.92 B`. */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`
  return String(n)
}

/** One self-overwriting line on stderr. */
export class ProgressBar {
  #started = Date.now()
  #drawn = false
  #lastDraw = 0

  constructor(
    readonly label: string,
    readonly enabled: boolean,
  ) {}

  update(loaded: number, total: number, detail = ''): void {
    if (!this.enabled) return
    const now = Date.now()
    if (loaded < total && now - this.#lastDraw < 80) return
    this.#lastDraw = now
    const fraction = total > 0 ? Math.min(1, loaded / total) : 0
    const columns = Math.max(40, err.columns ?? 80)
    const seconds = (now - this.#started) / 1000
    const rate = seconds > 0.5 ? ` ${formatBytes(loaded / seconds)}/s` : ''
    const text = `${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(loaded)}/${formatBytes(total)}${rate}${detail ? ` ${detail}` : ''}`
    const width = Math.max(10, Math.min(30, columns - this.label.length - text.length - 6))
    const filled = Math.round(fraction * width)
    const line = `${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`
    err.write(`\r\x1b[K${line.slice(0, columns - 1)}`)
    this.#drawn = true
  }

  done(): void {
    if (this.#drawn) err.write('\r\x1b[K')
    this.#drawn = false
  }
}
