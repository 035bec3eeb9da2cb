#!/usr/bin/env node
// Pins every per-platform package (npm/<platform>/, the CUDA variant excepted: users opt into it)
// as an optional dependency of the main package, at the main package's version. Run it right
// before `npm pack`/`npm publish` (what `napi pre-publish` does in a release). The checkout's
// package.json carries no pins: unpublished names would break `npm ci` for contributors.
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const pkgPath = join(root, 'package.json')
const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'))
const pins = {}
for (const dir of readdirSync(join(root, 'npm')).sort()) {
  const manifest = join(root, 'npm', dir, 'package.json')
  if (dir.endsWith('-cuda') || !existsSync(manifest)) continue
  const { name } = JSON.parse(readFileSync(manifest, 'utf8'))
  pins[name] = pkg.version
}
pkg.optionalDependencies = pins
writeFileSync(pkgPath, JSON.stringify(pkg, null, 2) + '\n')
console.log(`pinned ${Object.keys(pins).length} platform packages at ${pkg.version}`)
