/**
 * The cache's snapshot side: linking blobs into `snapshots/<commit>`, reading a complete cached
 * snapshot, and refs.
 *
 * @internal
 */

import { existsSync, statSync } from 'node:fs'
import { copyFile, mkdir, readFile, symlink, unlink, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { WEIGHTS, WEIGHTS_INDEX, isCommitHash, loadError } from './common.js'
import type { FileMeta } from './common.js'

/** Links `snapshots/<commit>/<file>` to its blob (a copy where symlinks are not allowed). */
export async function linkSnapshot(repo: string, meta: FileMeta): Promise<void> {
  const blob = join(repo, 'blobs', meta.etag)
  const target = join(repo, 'snapshots', meta.commit, meta.file)
  await mkdir(dirname(target), { recursive: true })
  try {
    if (statSync(target).size === meta.size) return
  } catch {
    // Not there yet.
  }
  await unlink(target).catch(() => undefined)
  try {
    await symlink(relative(dirname(target), blob), target)
  } catch {
    await copyFile(blob, target)
  }
}

/** Whether `blobs/<etag>` already holds the file. */
export function blobReady(blob: string, size: number): boolean {
  try {
    return statSync(blob).size === size
  } catch {
    return false
  }
}

/** The snapshot folder a cached revision points to, if it has a config and weights. */
export async function cachedSnapshot(repo: string, revision: string, configOnly = false): Promise<string | undefined> {
  let commit = revision
  if (!isCommitHash(revision)) {
    try {
      commit = (await readFile(join(repo, 'refs', revision), 'utf8')).trim()
    } catch {
      return undefined
    }
  }
  const dir = join(repo, 'snapshots', commit)
  if (!existsSync(join(dir, 'config.json'))) return undefined
  if (configOnly || existsSync(join(dir, WEIGHTS))) return dir
  try {
    const index = JSON.parse(await readFile(join(dir, WEIGHTS_INDEX), 'utf8')) as { weight_map?: Record<string, string> }
    const shards = new Set(Object.values(index.weight_map ?? {}))
    if (shards.size > 0 && [...shards].every((shard) => existsSync(join(dir, shard)))) return dir
  } catch {
    return undefined
  }
  return undefined
}

/** The shard files that a `model.safetensors.index.json` names, checked to be plain file names. */
export function shardsOf(indexText: string, file: string): string[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(indexText)
  } catch (error) {
    throw loadError(`${file} is not valid JSON`, error)
  }
  const map = (parsed as { weight_map?: unknown }).weight_map
  if (typeof map !== 'object' || map === null) throw loadError(`${file} has no weight_map`)
  const shards = [...new Set(Object.values(map as Record<string, unknown>))]
  if (shards.length === 0 || !shards.every((s): s is string => typeof s === 'string' && /^[\w.-]+$/.test(s))) {
    throw loadError(`${file} lists unusable shard names`)
  }
  return shards
}

/** Records the commit a branch or tag pointed to, as `refs/<revision>`. */
export async function writeRef(repo: string, revision: string, commit: string): Promise<void> {
  if (isCommitHash(revision)) return
  const ref = join(repo, 'refs', ...revision.split('/'))
  await mkdir(dirname(ref), { recursive: true })
  await writeFile(ref, commit)
}
