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
  #lastDetail = ''
  #lastDraw = 0

  constructor(
    readonly label: string,
    readonly enabled: boolean,
  ) {}

  update(loaded: number, total: number, detail = ''): void {
    if (!this.enabled) return
    const now = Date.now()
    // A new phase or file is drawn at once, however recent the last frame.
    if (loaded < total && now - this.#lastDraw < 80 && detail === this.#lastDetail) return
    this.#lastDraw = now
    this.#lastDetail = detail
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

/** Durations: `42s`, `5m03s`, `2h07m`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?'
  const s = Math.round(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

/** Progress through a count of items: a bar on a terminal, or JSON lines, on stderr. */
export class CountProgress {
  #started = performance.now()
  #last = 0
  #drawn = false

  /**
   * @param total - the items to do.
   * @param mode - `bar` (a self-overwriting line), `json` (one JSON line every 250 ms and at the
   *   end) or `none`.
   */
  constructor(
    readonly total: number,
    readonly mode: 'bar' | 'json' | 'none',
  ) {}

  /** Reports `done` items, `failed` of them failed; drawn at most every 100 ms (JSON: 250 ms). */
  update(done: number, failed: number, final = false): void {
    if (this.mode === 'none') return
    const now = performance.now()
    if (!final && now - this.#last < (this.mode === 'json' ? 250 : 100)) return
    this.#last = now
    const seconds = (now - this.#started) / 1000
    const rate = seconds > 0 ? done / seconds : 0
    const eta = rate > 0 ? (this.total - done) / rate : Number.POSITIVE_INFINITY
    if (this.mode === 'json') {
      const etaSeconds = Number.isFinite(eta) ? Math.round(eta) : null
      err.write(`${JSON.stringify({ done, total: this.total, failed, imagesPerSecond: Number(rate.toFixed(3)), etaSeconds })}\n`)
      return
    }
    const columns = Math.max(40, err.columns ?? 80)
    const text = `${done}/${this.total}${failed ? ` (${failed} failed)` : ''} ${rate.toFixed(2)} img/s ETA ${formatDuration(eta)}`
    const width = Math.max(10, Math.min(30, columns - text.length - 4))
    const filled = this.total > 0 ? Math.round((done / this.total) * width) : width
    err.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`.slice(0, columns))
    this.#drawn = true
  }

  /** Clears the bar. */
  done(): void {
    if (this.#drawn) err.write('\r\x1b[K')
    this.#drawn = false
  }
}
