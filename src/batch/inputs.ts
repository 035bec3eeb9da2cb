/**
 * The images a `paligemma batch` or `enqueue` command line names: folders (walked, sorted),
 * glob patterns (`'photos/**\/*.jpg'`, for shells that pass them quoted), list files (`.txt`,
 * one path per line), and image files.
 *
 * @packageDocumentation
 * @internal
 */

import { readFile, readdir, stat } from 'node:fs/promises'
import { dirname, join, relative, resolve, sep } from 'node:path'

import { PaliGemmaError } from '../errors.js'

/** File endings taken from folders and globs: the formats the decoder reads. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.bmp']

const isImageName = (name: string): boolean => IMAGE_EXTENSIONS.some((ext) => name.toLowerCase().endsWith(ext))

/**
 * The image paths `args` name, in order, each once. A folder gives its images (recursively,
 * sorted, hidden entries skipped); a `.txt` file gives its lines (blank lines and `#` comments
 * skipped, relative paths resolved against the list's folder); a pattern with `*`, `?`, `[` or
 * `{` that is not an existing file gives its matches; anything else is taken as an image path.
 *
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` for a folder, list or pattern that
 *   cannot be read or matches nothing.
 */
export async function listImages(args: readonly string[]): Promise<string[]> {
  const seen = new Set<string>()
  const paths: string[] = []
  const add = (path: string): void => {
    if (!seen.has(path)) {
      seen.add(path)
      paths.push(path)
    }
  }
  for (const arg of args) {
    const info = await stat(arg).catch(() => undefined)
    if (info?.isDirectory()) {
      const found = await walk(arg, isImageName)
      if (found.length === 0) throw missing(`the folder ${arg} has no images (${IMAGE_EXTENSIONS.join(', ')})`)
      found.forEach(add)
    } else if (info?.isFile() && arg.toLowerCase().endsWith('.txt')) {
      const text = await readFile(arg, 'utf8').catch((error: Error) => {
        throw missing(`cannot read the list ${arg}: ${error.message}`)
      })
      for (const line of text.split(/\r?\n/)) {
        const path = line.trim()
        if (path !== '' && !path.startsWith('#')) add(resolve(dirname(arg), path))
      }
    } else if (!info && /[*?[{]/.test(arg)) {
      const found = await glob(arg)
      if (found.length === 0) throw missing(`the pattern ${arg} matches no image`)
      found.forEach(add)
    } else add(arg)
  }
  return paths
}

function missing(message: string): PaliGemmaError {
  return new PaliGemmaError('ERR_INVALID_ARGUMENT', message)
}

/**
 * The files under `dir` whose names `keep` accepts, in sorted order. Hidden entries are skipped,
 * as shells skip them in globs, and symbolic links to folders are not followed.
 */
async function walk(dir: string, keep: (name: string) => boolean): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: Error) => {
    throw missing(`cannot read the folder ${dir}: ${error.message}`)
  })
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const out: string[] = []
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...(await walk(path, keep)))
    else if ((entry.isFile() || entry.isSymbolicLink()) && keep(entry.name)) out.push(path)
  }
  return out
}

/** The files matching a glob pattern: `*`, `?`, `[…]`, `{a,b}` within a name, `**` across folders. */
async function glob(pattern: string): Promise<string[]> {
  const parts = pattern.split(/[\\/]/)
  const fixed = parts.findIndex((p) => /[*?[{]/.test(p))
  const root = fixed === 0 ? '.' : parts.slice(0, fixed).join('/') || '/'
  const matcher = globRegExp(parts.slice(fixed).join('/'))
  const files = await walk(root, () => true)
  return files.filter((f) => matcher.test(relative(root, f).split(sep).join('/'))).sort()
}

/** A glob pattern (with `/` separators) as an anchored regular expression. */
export function globRegExp(pattern: string): RegExp {
  let source = ''
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!
    if (c === '*' && pattern[i + 1] === '*') {
      // `**/` matches any number of folders, none included.
      source += pattern[i + 2] === '/' ? '(?:[^/]*/)*' : '.*'
      i += pattern[i + 2] === '/' ? 2 : 1
    } else if (c === '*') source += '[^/]*'
    else if (c === '?') source += '[^/]'
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2)
      if (end < 0) source += '\\['
      else {
        source += `[${pattern.slice(i + 1, end).replace(/^!/, '^').replace(/\\/g, '\\\\')}]`
        i = end
      }
    } else if (c === '{') {
      const end = pattern.indexOf('}', i)
      if (end < 0) source += '\\{'
      else {
        source += `(?:${pattern.slice(i + 1, end).split(',').map(escape).join('|')})`
        i = end
      }
    } else source += escape(c)
  }
  return new RegExp(`^${source}$`)
}

function escape(text: string): string {
  return text.replace(/[.+^${}()|[\]\\*?]/g, '\\$&')
}
