// Models from the Hugging Face hub, against a local fake hub (helpers/fake-hub.mjs) on
// 127.0.0.1: download into the HF cache layout, reuse, resume, checksum, gated repos, tokens,
// sharded checkpoints, offline use. Serial: the tests share HF_ENDPOINT / HF_HOME / HF_TOKEN.
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma, downloadModel, hubCacheDir, isHubModelId, resolveModel } from '../dist/index.js'
import { startFakeHub, sha256 } from './helpers/fake-hub.mjs'
import { fixture, repo } from './helpers/fixtures.mjs'

const f = fixture('pg1-tiny-a')
const files = {
  'config.json': readFileSync(join(f.dir, 'config.json')),
  'model.safetensors': readFileSync(join(f.dir, 'model.safetensors')),
  'tokenizer.json': readFileSync(join(repo, 'testdata', 'tokenizers', 'tiny', 'tokenizer.json')),
}

/** Splits a safetensors file into two shards plus `model.safetensors.index.json`. */
function shard(bytes) {
  const headerLength = Number(bytes.readBigUInt64LE(0))
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'))
  const data = bytes.subarray(8 + headerLength)
  const names = Object.keys(header).filter((n) => n !== '__metadata__')
  const halves = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)]
  const out = {}
  const weightMap = {}
  halves.forEach((group, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`
    const newHeader = {}
    const parts = []
    let offset = 0
    for (const name of group) {
      const [begin, end] = header[name].data_offsets
      newHeader[name] = { ...header[name], data_offsets: [offset, offset + end - begin] }
      parts.push(data.subarray(begin, end))
      offset += end - begin
      weightMap[name] = file
    }
    let json = Buffer.from(JSON.stringify(newHeader))
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)])
    const prefix = Buffer.alloc(8)
    prefix.writeBigUInt64LE(BigInt(json.length))
    out[file] = Buffer.concat([prefix, json, ...parts])
  })
  out['model.safetensors.index.json'] = Buffer.from(JSON.stringify({ metadata: { total_size: data.length }, weight_map: weightMap }, null, 2))
  return out
}

const TOKEN = 'hf_test_token_1234'
let hub
const home = mkdtempSync(join(tmpdir(), 'paligemma-hf-home-'))
const saved = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HOME: process.env.HF_HOME, HF_TOKEN: process.env.HF_TOKEN, HF_HUB_CACHE: process.env.HF_HUB_CACHE }

test.before(async () => {
  const { 'model.safetensors': weights, ...rest } = files
  hub = await startFakeHub({
    'test-org/pg1-tiny': { files },
    'test-org/pg1-tiny-again': { files },
    'test-org/pg1-resume': { files, dropOnce: ['model.safetensors'] },
    'test-org/pg1-corrupt': { files, corrupt: ['model.safetensors'] },
    'test-org/pg1-gated': { files, token: TOKEN },
    'test-org/pg1-sharded': { files: { ...rest, ...shard(weights) } },
    'test-org/pg1-abort': { files },
    'test-org/no-weights': { files: { 'config.json': files['config.json'] } },
  })
  process.env.HF_ENDPOINT = hub.url
  process.env.HF_HOME = home
  delete process.env.HF_TOKEN
  delete process.env.HF_HUB_CACHE
})

test.after.always(async () => {
  await hub?.close()
  for (const [key, value] of Object.entries(saved)) {
    if (value === undefined) delete process.env[key]
    else process.env[key] = value
  }
  rmSync(home, { recursive: true, force: true })
})

const repoDir = (id) => join(home, 'hub', `models--${id.replace('/', '--')}`)

function maxDiff(a, b) {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}

test.serial('hub ids and the cache folder', (t) => {
  t.true(isHubModelId('google/paligemma2-3b-mix-224'))
  for (const notId of ['/abs/path', './rel/dir', '../x/y', 'a/b/c', 'noslash', 'a/..', '']) t.false(isHubModelId(notId), notId)
  t.is(hubCacheDir(), join(home, 'hub'))
  process.env.HF_HUB_CACHE = '/somewhere/else'
  t.is(hubCacheDir(), '/somewhere/else')
  delete process.env.HF_HUB_CACHE
})

test.serial('PaliGemma.load(owner/name) downloads into the HF cache layout and runs', async (t) => {
  const id = 'test-org/pg1-tiny'
  const progress = []
  const model = await PaliGemma.load(id, { onProgress: (p) => progress.push(p) })
  try {
    t.true(model.info.hasTokenizer)
    const { logits } = await model.forward({ inputIds: f.inputIds, pixelValues: f.pixelValues })
    t.true(maxDiff(logits, f.prefillLogits.data) <= 1e-4)
  } finally {
    await model.dispose()
  }
  const dir = repoDir(id)
  const commit = hub.commitOf(id)
  t.is(readFileSync(join(dir, 'refs', 'main'), 'utf8'), commit)
  const snapshot = join(dir, 'snapshots', commit)
  t.deepEqual(readdirSync(snapshot).sort(), ['config.json', 'model.safetensors', 'tokenizer.json'])
  const weightsLink = join(snapshot, 'model.safetensors')
  t.true(lstatSync(weightsLink).isSymbolicLink())
  t.is(readlinkSync(weightsLink), join('..', '..', 'blobs', sha256(files['model.safetensors'])))
  t.deepEqual(readFileSync(weightsLink), files['model.safetensors'])
  t.false(readdirSync(join(dir, 'blobs')).some((name) => name.endsWith('.incomplete')))
  // Download progress first (phase 'download', ending complete), then loading.
  const downloads = progress.filter((p) => p.phase === 'download')
  t.true(downloads.length > 0)
  const total = files['config.json'].length + files['model.safetensors'].length + files['tokenizer.json'].length
  t.deepEqual(downloads.at(-1), { phase: 'download', file: 'tokenizer.json', loadedBytes: total, totalBytes: total })
  t.is(progress.at(-1).loadedBytes, progress.at(-1).totalBytes)
  // Loading reports its own phase: a Hugging Face folder in f32 is converted.
  t.is(progress.at(-1).phase, 'converting')
  t.true(progress.findLastIndex((p) => p.phase === 'download') < progress.findIndex((p) => p.phase !== 'download'))
  // No token configured: none sent.
  t.true(hub.log.every((r) => r.authorization === undefined))
})

test.serial('a second load reuses the cache: no GET of any file', async (t) => {
  const id = 'test-org/pg1-tiny'
  const before = hub.log.length
  const model = await PaliGemma.load(id)
  await model.dispose()
  const requests = hub.log.slice(before)
  t.true(requests.length > 0, 'it checks the revision with HEAD requests')
  t.deepEqual(requests.filter((r) => r.method !== 'HEAD'), [])
  t.deepEqual(requests.filter((r) => r.server === 'storage'), [])
})

test.serial('resolveModel: an existing folder is returned as is; a missing path is ERR_MODEL_LOAD', async (t) => {
  t.is(await resolveModel(f.dir), f.dir)
  await t.throwsAsync(resolveModel('/no/such/model/folder'), { code: 'ERR_MODEL_LOAD', message: /no model folder/ })
  await t.throwsAsync(resolveModel('test-org/does-not-exist'), { code: 'ERR_MODEL_LOAD', message: /no such model/ })
})

test.serial('an interrupted download resumes with a Range request and is verified', async (t) => {
  const id = 'test-org/pg1-resume'
  const before = hub.log.length
  const dir = await resolveModel(id)
  const gets = hub.log.slice(before).filter((r) => r.server === 'storage' && r.method === 'GET')
  t.is(gets.length, 2, JSON.stringify(gets))
  t.is(gets[0].range, undefined)
  const half = files['model.safetensors'].length >> 1
  t.regex(gets[1].range ?? '', /^bytes=\d+-$/)
  const from = Number(/^bytes=(\d+)-$/.exec(gets[1].range)[1])
  t.true(from > 0 && from <= half, `resumed from ${from}`)
  t.deepEqual(readFileSync(join(dir, 'model.safetensors')), files['model.safetensors'])
  const model = await PaliGemma.load(dir)
  await model.dispose()
})

test.serial('a corrupted download is rejected and deleted', async (t) => {
  const id = 'test-org/pg1-corrupt'
  const error = await t.throwsAsync(resolveModel(id), { code: 'ERR_MODEL_LOAD', message: /corrupt.*sha256/ })
  t.regex(error.message, /model\.safetensors/)
  const blobs = join(repoDir(id), 'blobs')
  const left = existsSync(blobs) ? readdirSync(blobs) : []
  t.false(left.includes(sha256(files['model.safetensors'])))
  t.false(left.some((name) => name.endsWith('.incomplete')))
  t.false(existsSync(join(repoDir(id), 'snapshots', hub.commitOf(id), 'model.safetensors')))
})

test.serial('gated models: 401/403 say to accept the license and set HF_TOKEN; HF_TOKEN is sent to the hub only', async (t) => {
  const id = 'test-org/pg1-gated'
  const anonymous = await t.throwsAsync(PaliGemma.load(id), { code: 'ERR_MODEL_LOAD' })
  t.regex(anonymous.message, /gated or private/)
  t.regex(anonymous.message, /HTTP 401/)
  t.regex(anonymous.message, /[Aa]ccept the model's license on http:\/\/127\.0\.0\.1:\d+\/test-org\/pg1-gated/)
  t.regex(anonymous.message, /HF_TOKEN/)

  process.env.HF_TOKEN = 'hf_wrong'
  try {
    const wrong = await t.throwsAsync(resolveModel(id), { code: 'ERR_MODEL_LOAD' })
    t.regex(wrong.message, /HTTP 403/)
    t.regex(wrong.message, /license/)
    t.regex(wrong.message, /HF_TOKEN was sent but does not grant access/)

    process.env.HF_TOKEN = TOKEN
    const before = hub.log.length
    const model = await PaliGemma.load(id)
    await model.dispose()
    const requests = hub.log.slice(before)
    const hubRequests = requests.filter((r) => r.server === 'hub')
    t.true(hubRequests.length > 0)
    t.true(hubRequests.every((r) => r.authorization === `Bearer ${TOKEN}`))
    // The signed storage URL must not receive the token.
    const storage = requests.filter((r) => r.server === 'storage')
    t.true(storage.length > 0)
    t.true(storage.every((r) => r.authorization === undefined))
  } finally {
    delete process.env.HF_TOKEN
  }
})

test.serial('sharded checkpoints: the index and every shard are downloaded', async (t) => {
  const id = 'test-org/pg1-sharded'
  const dir = await resolveModel(id)
  t.deepEqual(readdirSync(dir).sort(), [
    'config.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
    'tokenizer.json',
  ])
  const model = await PaliGemma.load(dir)
  try {
    const { logits } = await model.forward({ inputIds: f.inputIds, pixelValues: f.pixelValues })
    t.true(maxDiff(logits, f.prefillLogits.data) <= 1e-4)
  } finally {
    await model.dispose()
  }
})

test.serial('offline: a cached model loads without the network (HF_HUB_OFFLINE and an unreachable hub)', async (t) => {
  const id = 'test-org/pg1-tiny'
  const snapshot = join(repoDir(id), 'snapshots', hub.commitOf(id))
  process.env.HF_HUB_OFFLINE = '1'
  try {
    const before = hub.log.length
    t.is(await resolveModel(id), snapshot)
    t.is(hub.log.length, before)
    await t.throwsAsync(resolveModel('test-org/never-downloaded'), { code: 'ERR_MODEL_LOAD', message: /HF_HUB_OFFLINE/ })
  } finally {
    delete process.env.HF_HUB_OFFLINE
  }
  // A hub that does not answer (closed port): the cached snapshot is used.
  t.is(await downloadModel(id, { endpoint: 'http://127.0.0.1:9' }), snapshot)
  await t.throwsAsync(downloadModel('test-org/never-downloaded', { endpoint: 'http://127.0.0.1:9' }), {
    code: 'ERR_MODEL_LOAD',
    message: /cannot reach/,
  })
})

test.serial('abort: a download stops with an AbortError and a later call resumes it', async (t) => {
  const id = 'test-org/pg1-abort'
  await t.throwsAsync(downloadModel(id, { signal: AbortSignal.abort() }), { name: 'AbortError', code: 'ABORT_ERR' })
  const controller = new AbortController()
  const pending = downloadModel(id, {
    signal: controller.signal,
    onProgress: (p) => {
      if (p.file === 'model.safetensors' && p.loadedBytes > 0) controller.abort()
    },
  })
  await t.throwsAsync(pending, { name: 'AbortError' })
  const dir = await downloadModel(id)
  t.deepEqual(readFileSync(join(dir, 'model.safetensors')), files['model.safetensors'])
})

test.serial('a repository without weights, and malformed ids, are errors', async (t) => {
  await t.throwsAsync(downloadModel('test-org/no-weights'), { code: 'ERR_MODEL_LOAD', message: /model\.safetensors/ })
  await t.throwsAsync(downloadModel('not an id'), { code: 'ERR_INVALID_ARGUMENT' })
  await t.throwsAsync(downloadModel('test-org/pg1-tiny', { revision: '../../etc' }), { code: 'ERR_INVALID_ARGUMENT' })
  // configOnly fetches config.json alone (what `paligemma info <id>` needs).
  const again = 'test-org/pg1-tiny-again'
  const before = hub.log.length
  const dir = await downloadModel(again, { configOnly: true })
  t.deepEqual(readdirSync(dir), ['config.json'])
  t.deepEqual(hub.log.slice(before).filter((r) => r.server === 'storage'), [])
})
