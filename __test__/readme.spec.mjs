// Every TypeScript snippet in the README type-checks against the built package, and those that
// need no server run on the bundled tiny model (issue 25: the old "Use it" snippet did not
// compile). Paths and hub ids in the snippets are swapped for local files; nothing else changes.
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'

import test from 'ava'

import { fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'

const run = promisify(execFile)
const readme = readFileSync(join(repo, 'README.md'), 'utf8')
const snippets = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1])
const dir = join(repo, 'target', 'readme-snippets')

test('the README\'s TypeScript snippets type-check, and the ones without a server run', async (t) => {
  t.true(snippets.length >= 3, `${snippets.length} snippets found`)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const model = fixtureWithTokenizer('pg1-tiny-a')
  const image = join(repo, 'testdata', 'processor', 'chelsea.png')
  const swaps = [
    ["'google/paligemma2-3b-mix-224'", JSON.stringify(model)],
    ["'cat.jpg'", JSON.stringify(image)],
    ["'receipt.png'", JSON.stringify(join(repo, 'testdata', 'e2e-caption', 'image.png'))],
    ["'vae-oid.safetensors'", JSON.stringify(join(repo, 'testdata', 'vae', 'vae-tiny.safetensors'))],
    ["'boxes.png'", JSON.stringify(join(dir, 'boxes.png'))],
  ]
  snippets.forEach((code, i) => {
    let local = code
    for (const [from, to] of swaps) local = local.replaceAll(from, to)
    writeFileSync(join(dir, `snippet${i}.ts`), local)
  })
  const config = { compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, types: ['node'], skipLibCheck: true, outDir: 'out', rootDir: '.' }, include: ['*.ts'] }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(config))
  // The snippets import 'paligemma' by name: the repository's package.json resolves it to dist/.
  const tsc = await run(process.execPath, [join(repo, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir]).catch((e) => e)
  t.falsy(tsc.code, `tsc: ${tsc.stdout}${tsc.stderr}`)
  // The snippets that talk to a running server (fetch to 127.0.0.1:8080) are only type-checked.
  const runnable = snippets.map((code, i) => [code, i]).filter(([code]) => !code.includes('127.0.0.1:8080'))
  t.true(runnable.length >= 2)
  for (const [, i] of runnable) {
    const { stdout, stderr } = await run(process.execPath, [join(dir, 'out', `snippet${i}.js`)], { cwd: dir, env: { ...process.env, PALIGEMMA_NO_CUDA: '1' }, timeout: 120_000 })
    t.log(`snippet ${i}: ${JSON.stringify(stdout.slice(0, 60))}${stderr ? ` (stderr ${stderr.slice(0, 200)})` : ''}`)
  }
  t.deepEqual([...readFileSync(join(dir, 'boxes.png')).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'the tasks snippet wrote its PNG')
})
