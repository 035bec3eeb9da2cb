// Issue 19: the hostile inputs that crashed, hung or grew without bound. Each runs in a child
// process of its own (helpers/isolated.mjs), where an abort or a hang is the failure, with a
// time limit and a bound on the growth of the peak RSS.
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, rmSync, symlinkSync, writeFileSync, openSync, ftruncateSync, closeSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { fixtureDir, fixtureWithTokenizer } from './helpers/fixtures.mjs'
import { isolated } from './helpers/isolated.mjs'
import { uniformRowsPng } from './helpers/png.mjs'
import { tempDir } from './helpers/safetensors-write.mjs'

const withTokenizer = fixtureWithTokenizer('pg1-tiny-a')
const scratch = tempDir('hostile-limits')

test.after.always(() => {
  rmSync(scratch, { recursive: true, force: true })
  rmSync(withTokenizer, { recursive: true, force: true })
})

const growth = (r) => r.peakMB - r.beforeMB

function mkfifo(path) {
  execFileSync('mkfifo', [path])
  return path
}

/** A copy of the tokenizer-bearing fixture named `label`, changed by `edit(dir)`. */
function folder(label, edit) {
  const dir = join(scratch, label)
  mkdirSync(dir, { recursive: true })
  for (const file of ['config.json', 'model.safetensors', 'tokenizer.json']) copyFileSync(join(withTokenizer, file), join(dir, file))
  edit(dir)
  return dir
}

test('a raw 1 × 10⁸ image resizes in bounded memory and time', async (t) => {
  const r = await isolated('tallRaw', {}, { timeoutMs: 90_000 })
  t.is(r.length, 3 * 224 * 224)
  t.deepEqual([r.width, r.height], [1, 1e8])
  // A constant image stays constant. Its level is 89, not 90, and that is Pillow's arithmetic:
  // at a 446 000× reduction each of the 1.8 M taps is about 2.4 units of 2⁻²², rounded to an
  // integer, so the taps no longer sum to one (the same code gives 90 for ordinary sizes).
  t.is(r.distinct, 1)
  t.is(Math.round((r.value * 0.5 + 0.5) * 255), 89)
  // The caller's 100 MB, the addon's copy (100 MB) and RGB (300 MB); it used to abort at 67 GB.
  t.log(`1 × 10⁸ raw: ${r.ms.toFixed(0)} ms, peak RSS +${growth(r).toFixed(0)} MB`)
  t.true(growth(r) < 650, `peak RSS grew by ${growth(r)} MB`)
})

test('a 78 KB PNG of 1 × 4·10⁷ pixels generates in bounded memory', async (t) => {
  const path = join(scratch, 'tall.png')
  writeFileSync(path, await uniformRowsPng(1, 4e7, Buffer.from([0, 128])))
  const r = await isolated('generateFromFile', { dir: withTokenizer, path }, { timeoutMs: 90_000 })
  t.deepEqual(r.image, { width: 1, height: 4e7 })
  t.true(r.tokens >= 1)
  t.true(r.serves, 'the model still serves a good request')
  // RGB is 120 MB; the PNG is decoded row by row into it.
  t.log(`1 × 4·10⁷ PNG: ${r.ms.toFixed(0)} ms, peak RSS +${growth(r).toFixed(0)} MB`)
  t.true(growth(r) < 250, `peak RSS grew by ${growth(r)} MB`)
})

test('a 100-megapixel 16-bit PNG takes about 3 bytes a pixel', async (t) => {
  const side = 10_000
  const row = Buffer.alloc(1 + 2 * side, 0x9a)
  row[0] = 0
  const path = join(scratch, 'big16.png')
  writeFileSync(path, await uniformRowsPng(side, side, row, { bitDepth: 16 }))
  const r = await isolated('preprocessFile', { path, size: 224 }, { timeoutMs: 120_000 })
  t.deepEqual([r.width, r.height], [side, side])
  t.true(Math.abs(r.first - (0x9a / 255 - 0.5) / 0.5) < 1e-6, 'the high byte of each sample is kept')
  // docs/guarantees.md: PNGs decode straight to RGB, 3 bytes a pixel (300 MB here); the
  // `image` crate's path held the 16-bit image as well (2 + 3 bytes a pixel, 1.27 GB for RGB).
  t.log(`100 MP 16-bit PNG: ${r.ms.toFixed(0)} ms, peak RSS +${growth(r).toFixed(0)} MB`)
  t.true(growth(r) < 3.5 * 100, `peak RSS grew by ${growth(r)} MB`)
})

test('a FIFO as an image path is refused at once and the model keeps serving', async (t) => {
  const fifo = mkfifo(join(scratch, 'image.png'))
  // The child must also exit by itself: a thread blocked on the FIFO kept process.exit waiting.
  const r = await isolated('fifoImage', { dir: withTokenizer, fifo }, { timeoutMs: 30_000 })
  for (const [what, outcome] of Object.entries({ generate: r.generate, preprocessImage: r.preprocess })) {
    t.is(outcome.code, 'ERR_INVALID_IMAGE', `${what}: ${outcome.message}`)
    t.regex(outcome.message, /FIFO/, what)
    // Not blocking is shown by the child settling at all (isolated() kills it after 30 s).
    t.log(`${what}: refused in ${outcome.ms.toFixed(0)} ms`)
  }
  t.true(r.serves, 'the model still serves a good request')
})

test('FIFOs, devices and huge files in a model folder fail the load at once', async (t) => {
  const sharded = (dir) => {
    rmSync(join(dir, 'model.safetensors'))
    mkfifo(join(dir, 'model.safetensors.index.json'))
  }
  const dirs = [
    folder('fifo-config', (dir) => (rmSync(join(dir, 'config.json')), mkfifo(join(dir, 'config.json')))),
    folder('fifo-weights', (dir) => (rmSync(join(dir, 'model.safetensors')), mkfifo(join(dir, 'model.safetensors')))),
    folder('fifo-tokenizer', (dir) => (rmSync(join(dir, 'tokenizer.json')), mkfifo(join(dir, 'tokenizer.json')))),
    folder('fifo-index', sharded),
    // A 4 GiB sparse config.json (it cost 4.3 GB before the JSON error) and a tokenizer that is
    // a link to /dev/zero (it grew until the OOM killer came).
    folder('sparse-config', (dir) => {
      const fd = openSync(join(dir, 'config.json'), 'w')
      ftruncateSync(fd, 4 * 2 ** 30)
      closeSync(fd)
    }),
    folder('zero-tokenizer', (dir) => (rmSync(join(dir, 'tokenizer.json')), symlinkSync('/dev/zero', join(dir, 'tokenizer.json')))),
  ]
  const r = await isolated('loadFolders', { dirs, goodDir: fixtureDir('pg1-tiny-a') }, { timeoutMs: 30_000 })
  const expected = [/config\.json.*FIFO/, /model\.safetensors.*FIFO/, /tokenizer\.json.*FIFO/, /index\.json.*FIFO/, /config\.json.*4194304-byte limit/, /tokenizer\.json.*character device/]
  r.results.forEach((outcome, i) => {
    t.is(outcome.code, 'ERR_MODEL_LOAD', `${dirs[i]}: ${outcome.message}`)
    t.regex(outcome.message, expected[i])
    t.log(`${dirs[i]}: refused in ${outcome.ms.toFixed(0)} ms`)
  })
  t.true(r.serves, 'a good folder still loads and serves')
  t.true(growth(r) < 100, `peak RSS grew by ${growth(r)} MB`)
})

test('prompts too long for the context are refused before tokenizing', async (t) => {
  const prompts = [
    { char: '語', count: 1e7 },
    { char: 'a', count: 1e8 },
    { char: ' ', count: 1e7 },
  ]
  const r = await isolated('longPrompts', { dir: withTokenizer, prompts }, { timeoutMs: 60_000 })
  r.results.forEach((outcome, i) => {
    t.is(outcome.code, 'ERR_INVALID_ARGUMENT', outcome.message)
    t.regex(outcome.message, /`prompt`.*cannot fit in the model's context/)
    // It took 21 s and 4 GB for 10⁷ CJK characters; what is left is copying the string.
    t.log(`${prompts[i].count} × ${JSON.stringify(prompts[i].char)}: ${outcome.ms.toFixed(0)} ms`)
  })
  // Tokenizing would have cost gigabytes (4 GB for 10⁷ CJK characters); the strings themselves
  // are at most 300 MB. The order itself is tested without a clock in crates/paligemma/tests/prompt.rs.
  t.true(growth(r) < 1500, `peak RSS grew by ${growth(r)} MB`)
  t.true(r.serves, 'the model still serves a good request')
  // The largest string is 100 MB in JS and 100 MB as UTF-8 for the addon.
  t.true(growth(r) < 600, `peak RSS grew by ${growth(r)} MB`)
})
