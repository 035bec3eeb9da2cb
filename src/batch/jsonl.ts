/**
 * A results file of JSON lines that a rerun resumes: lines are appended whole, one write each,
 * and on open the file is read back, a torn last line (a crash mid-write) and error lines
 * (images to try again) are dropped, and the keys of the good lines are what is already done.
 *
 * @packageDocumentation
 * @internal
 */

import { closeSync, createReadStream, existsSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs'
import { createInterface } from 'node:readline'

import { PaliGemmaError } from '../errors.js'

/** An append-only JSON-lines file. */
export class JsonlWriter {
  #fd: number | undefined

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.#fd = fd
  }

  /**
   * Opens `path` for appending, after reading back what it holds: lines that parse to an object
   * with a string `key` field and no `error` field are kept (and their keys returned); anything
   * else is removed by rewriting the file (to a temporary file renamed over it, so a crash then
   * loses nothing).
   */
  static async open(path: string, key: string): Promise<{ writer: JsonlWriter; done: Set<string> }> {
    const done = new Set<string>()
    if (existsSync(path)) {
      const kept: string[] = []
      let dropped = 0
      try {
        const lines = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity })
        for await (const line of lines) {
          const value = parseLine(line)
          const id = value?.[key]
          if (typeof id === 'string' && value?.error === undefined && !done.has(id)) {
            done.add(id)
            kept.push(line)
          } else if (line.trim() !== '') dropped++
        }
      } catch (error) {
        throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `cannot read the results file ${path}: ${(error as Error).message}`)
      }
      if (dropped > 0) rewrite(path, kept)
    }
    let fd: number
    try {
      fd = openSync(path, 'a')
    } catch (error) {
      throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `cannot write the results file ${path}: ${(error as Error).message}`)
    }
    return { writer: new JsonlWriter(path, fd), done }
  }

  /** Appends one record as one line, in one write. */
  write(record: unknown): void {
    if (this.#fd === undefined) throw new PaliGemmaError('ERR_INTERNAL', `internal error: ${this.path} is closed`)
    const bytes = Buffer.from(`${JSON.stringify(record)}\n`)
    let written = 0
    while (written < bytes.length) written += writeSync(this.#fd, bytes, written)
  }

  /** Flushes to disk and closes. */
  close(): void {
    if (this.#fd === undefined) return
    fsyncSync(this.#fd)
    closeSync(this.#fd)
    this.#fd = undefined
  }
}

function parseLine(line: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line)
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

function rewrite(path: string, lines: string[]): void {
  const temporary = `${path}.${process.pid}.tmp`
  const fd = openSync(temporary, 'w')
  try {
    for (const line of lines) writeSync(fd, `${line}\n`)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(temporary, path)
}
