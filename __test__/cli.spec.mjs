// The `paligemma` command line, run as a child process: help, usage errors (exit 2), failures
// (exit 1 with the error code), info, convert, convert-vae, quantize, bench, and the inference
// commands on the tiny fixtures.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { PaliGemma } from '../dist/index.js'
import { startFakeHub } from './helpers/fake-hub.mjs'
import { fixture, fixtureDir, fixtureWithTokenizer, repo } from './helpers/fixtures.mjs'
import { writeNpz } from './helpers/npz.mjs'
import { runCli } from './helpers/run-cli.mjs'
import { readSafetensors } from './helpers/safetensors.mjs'

const COMMANDS = ['caption', 'ask', 'ocr', 'detect', 'segment', 'generate', 'batch', 'worker', 'enqueue', 'results', 'cancel', 'serve', 'info', 'convert', 'convert-vae', 'quantize', 'bench']
const tmp = mkdtempSync(join(tmpdir(), 'paligemma-cli-'))
test.after.always(() => rmSync(tmp, { recursive: true, force: true }))

/** Parameters stored in a safetensors file (sum of the shapes' products), from its header. */
function storedParameters(path) {
  const bytes = readFileSync(path)
  const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8'))
  return Object.entries(header)
    .filter(([name]) => name !== '__metadata__')
    .reduce((sum, [, info]) => sum + info.shape.reduce((a, b) => a * b, 1), 0)
}

test('--help lists every command and exits 0; no command is a usage error', async (t) => {
  const help = await runCli(['--help'])
  t.is(help.code, 0, help.stderr)
  for (const command of COMMANDS) t.regex(help.stdout, new RegExp(`^  ${command} `, 'm'))
  t.regex(help.stdout, /Usage: paligemma <command>/)
  const bare = await runCli([])
  t.is(bare.code, 2)
  t.regex(bare.stderr, /Usage: paligemma <command>/)
  // `npx paligemma -- --help`: npx hands the `--` on; it is skipped.
  const dashed = await runCli(['--', '--help'])
  t.is(dashed.code, 0, dashed.stderr)
  t.is(dashed.stdout, help.stdout)
  const dashedCommand = await runCli(['--', 'caption', '--help'])
  t.is(dashedCommand.code, 0, dashedCommand.stderr)
  t.regex(dashedCommand.stdout, /^Usage: paligemma caption/m)
  const version = await runCli(['--version'])
  t.is(version.code, 0)
  t.is(version.stdout.trim(), JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')).version)
})

test('each command has --help', async (t) => {
  for (const command of COMMANDS.filter((c) => c !== 'bench')) {
    const { code, stdout } = await runCli([command, '--help'])
    t.is(code, 0, command)
    t.regex(stdout, new RegExp(`Usage: paligemma ${command}`), command)
  }
  const caption = await runCli(['caption', '--help'])
  for (const flag of ['--model', '--image', '--device', '--dtype', '--max-new-tokens', '--temperature', '--seed', '--json']) {
    t.true(caption.stdout.includes(flag), flag)
  }
})

test('usage errors exit 2 with ERR_USAGE: unknown command, unknown flag, missing or malformed options', async (t) => {
  const cases = [
    [['bogus'], /unknown command 'bogus'/],
    [['--bogus'], /expected a command/],
    [['caption', '--bogus'], /Unknown option '--bogus'/],
    [['caption', '--image', 'x.png'], /missing required option --model/],
    [['caption', '--model', fixtureDir('pg1-tiny-a')], /missing required option --image/],
    [['caption', '--model', 'm', '--image', 'x.png', '--max-new-tokens', 'ten'], /--max-new-tokens must be an integer/],
    [['caption', '--model', 'm', '--image', 'x.png', '--device', 'tpu'], /--device must be one of auto, cpu, cuda/],
    [['caption', '--model', 'm', '--image', 'x.png', 'extra'], /Unexpected argument 'extra'|unexpected argument/],
    [['ask', '--model', 'm', '--image', 'x.png'], /missing the question/],
    [['detect', '--model', 'm', '--image', 'x.png'], /missing the labels/],
    [['generate', '--model', 'm', '--image', 'x.png'], /missing required option --prompt/],
    [['info'], /missing the model/],
    [['convert', 'only-one.npz'], /convert takes <checkpoint\.npz> <out-dir>/],
    [['convert', 'a.npz', 'out', '--dtype', 'f8'], /--dtype must be one of f32, bf16, f16/],
    [['convert-vae'], /convert-vae takes/],
    // Malformed values are usage errors before anything loads (the model path does not exist).
    [['caption', '--model', 'no-such-model', '--image', 'x.png', '-n', '0'], /--max-new-tokens must be at least 1/],
    [['caption', '--model', 'no-such-model', '--image', 'x.png', '--threads', '0'], /--threads must be at least 1/],
    [['caption', '--model', 'no-such-model', '--image', 'x.png', '--top-p', '1.5'], /--top-p must be in \(0, 1\]/],
    [['caption', '--model', 'no-such-model', '--image', 'x.png', '--temperature=-1'], /--temperature must be 0/],
    [['caption', '--model', 'no-such-model', '--image', 'x.png', '--seed=-3'], /--seed must be an integer/],
    [['segment', '--model', 'no-such-model', '--image', 'x.png', 'cat'], /segment needs --vae/],
  ]
  for (const [args, message] of cases) {
    const { code, stdout, stderr } = await runCli(args, { env: { PALIGEMMA_MODEL: '' } })
    t.is(code, 2, `${args.join(' ')}: ${stderr}`)
    t.regex(stderr, /^paligemma: ERR_USAGE: /, args.join(' '))
    t.regex(stderr, message, args.join(' '))
    t.is(stdout, '', args.join(' '))
  }
})

test('a missing model exits 1 with ERR_MODEL_LOAD; a missing image with ERR_INVALID_IMAGE', async (t) => {
  const image = join(repo, 'testdata', 'e2e-caption', 'image.png')
  const missing = await runCli(['caption', '--model', join(tmp, 'no-such-model'), '--image', image])
  t.is(missing.code, 1)
  t.regex(missing.stderr, /^paligemma: ERR_MODEL_LOAD: .*no-such-model/m)
  const noImage = await runCli(['caption', '--model', fixtureDir('pg1-tiny-a'), '--image', join(tmp, 'nope.png')])
  t.is(noImage.code, 1)
  t.regex(noImage.stderr, /^paligemma: ERR_INVALID_IMAGE: .*nope\.png/m)
  const badConfig = await runCli(['info', join(repo, 'testdata')])
  t.is(badConfig.code, 1)
  t.regex(badConfig.stderr, /^paligemma: ERR_MODEL_LOAD: .*config\.json/m)
})

test('info prints the architecture, sizes, parameter count and memory needs', async (t) => {
  const dir = fixtureDir('pg2-tiny-a')
  const { code, stdout, stderr } = await runCli(['info', dir])
  t.is(code, 0, stderr)
  const parameters = storedParameters(join(dir, 'model.safetensors'))
  t.regex(stdout, /^architecture +paligemma2 \(SigLIP vision tower \+ Gemma 2 decoder\)$/m)
  t.regex(stdout, /^image +32×32 px, patch 8, 16 image tokens$/m)
  t.regex(stdout, /^decoder +3 layers, hidden 80, /m)
  t.regex(stdout, new RegExp(`^parameters +.*\\(${parameters}\\)`, 'm'))
  t.regex(stdout, /^weights +1 file, .* stored as f32$/m)
  t.regex(stdout, /^memory +weights .* as f32, .* as bf16\/f16; KV cache/m)
})

test('info --json parses and matches the checkpoint', async (t) => {
  for (const name of ['pg1-tiny-a', 'pg2-tiny-a']) {
    const dir = fixtureDir(name)
    const { code, stdout } = await runCli(['info', '--json', dir])
    t.is(code, 0)
    const info = JSON.parse(stdout)
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    const parameters = storedParameters(join(dir, 'model.safetensors'))
    t.is(info.architecture, name.startsWith('pg2') ? 'paligemma2' : 'paligemma')
    t.is(info.imageSize, config.vision_config.image_size)
    t.is(info.text.layers, config.text_config.num_hidden_layers)
    t.is(info.text.vocabSize, config.text_config.vocab_size)
    t.is(info.parameterCount, parameters)
    t.is(info.vision.parameters + info.projectorParameters + info.text.parameters, parameters)
    t.deepEqual(info.weightBytes, { f32: parameters * 4, bf16: parameters * 2, f16: parameters * 2 })
    t.is(info.files.dtype, 'f32')
    t.false(info.files.hasTokenizer)
  }
})

test('info on a hub id downloads config.json only', async (t) => {
  const config = readFileSync(join(fixtureDir('pg1-tiny-a'), 'config.json'))
  const weights = readFileSync(join(fixtureDir('pg1-tiny-a'), 'model.safetensors'))
  const hub = await startFakeHub({ 'test-org/tiny': { files: { 'config.json': config, 'model.safetensors': weights } } })
  try {
    const home = join(tmp, 'hf-info')
    const { code, stdout, stderr } = await runCli(['info', 'test-org/tiny'], { env: { HF_ENDPOINT: hub.url, HF_HOME: home } })
    t.is(code, 0, stderr)
    t.regex(stdout, /^model +test-org\/tiny \(.*models--test-org--tiny/m)
    t.regex(stdout, /^weights +not downloaded/m)
    t.deepEqual(hub.downloads(), [])
  } finally {
    await hub.close()
  }
})

test('convert writes a folder that info and PaliGemma.load accept, with the reference logits', async (t) => {
  const name = 'pg1-tiny-a'
  const out = join(tmp, 'converted')
  const { code, stdout, stderr } = await runCli([
    'convert',
    join(fixtureDir(name), 'checkpoint.npz'),
    out,
    '--config',
    join(fixtureDir(name), 'config.json'),
    '--tokenizer',
    join(repo, 'testdata', 'tokenizers', 'tiny', 'tokenizer.json'),
  ])
  t.is(code, 0, stderr)
  t.regex(stdout, /^wrote .*converted: 59 tensors, .* float32; .*config given$/m)
  t.true(existsSync(join(out, 'tokenizer.json')))
  const info = await runCli(['info', '--json', out])
  t.is(info.code, 0, info.stderr)
  t.is(JSON.parse(info.stdout).parameterCount, storedParameters(join(fixtureDir(name), 'model.safetensors')))
  t.true(JSON.parse(info.stdout).files.hasTokenizer)
  const f = fixture(name)
  const model = await PaliGemma.load(out)
  try {
    const { logits } = await model.forward({ inputIds: f.inputIds, pixelValues: f.pixelValues })
    let maxDiff = 0
    for (let i = 0; i < logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(logits[i] - f.prefillLogits.data[i]))
    t.true(maxDiff <= 1e-4, `max |Δ| ${maxDiff}`)
  } finally {
    await model.dispose()
  }
  const bf16 = await runCli(['convert', '--json', '--dtype', 'bf16', join(fixtureDir(name), 'checkpoint.npz'), join(tmp, 'converted-bf16')])
  t.is(bf16.code, 0, bf16.stderr)
  const report = JSON.parse(bf16.stdout)
  t.is(report.dtype, 'bf16')
  t.true(report.configInferred)
  t.true(report.warnings.length > 0)
  const bad = await runCli(['convert', join(fixtureDir(name), 'config.json'), join(tmp, 'not-converted')])
  t.is(bad.code, 1)
  t.regex(bad.stderr, /^paligemma: ERR_MODEL_LOAD: /m)
})

test('convert-vae converts a synthetic vae-oid.npz into the same tensors', async (t) => {
  const tensors = readSafetensors(join(repo, 'testdata', 'vae', 'vae-tiny.safetensors'))
  const npz = join(tmp, 'vae-oid.npz')
  writeNpz(npz, Object.fromEntries(Object.entries(tensors).map(([name, { shape, data }]) => [name, { shape, data }])))
  const out = join(tmp, 'vae', 'vae.safetensors')
  const { code, stdout, stderr } = await runCli(['convert-vae', npz, out])
  t.is(code, 0, stderr)
  t.regex(stdout, new RegExp(`^wrote .*vae\\.safetensors: ${Object.keys(tensors).length} tensors, .* codebook 128×64$`, 'm'))
  const written = readSafetensors(out)
  t.deepEqual(Object.keys(written).sort(), Object.keys(tensors).sort())
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    t.deepEqual(written[name].shape, shape, name)
    t.deepEqual(written[name].data, data, name)
  }
  const json = await runCli(['convert-vae', '--json', npz, join(tmp, 'vae2.safetensors')])
  t.deepEqual(JSON.parse(json.stdout).codebook, [128, 64])
  // The big_vision model checkpoint is not a VAE.
  const wrong = await runCli(['convert-vae', join(fixtureDir('pg1-tiny-a'), 'checkpoint.npz'), join(tmp, 'wrong.safetensors')])
  t.is(wrong.code, 1)
  t.regex(wrong.stderr, /^paligemma: ERR_MODEL_LOAD: .*_vq_vae\._embedding/m)
})

test('quantize writes a prepared folder that captions like the original; refusals are clear', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  const out = join(tmp, 'prepared')
  const { code, stdout, stderr } = await runCli(['quantize', dir, out])
  t.is(code, 0, stderr)
  t.regex(stdout, /^wrote .*prepared: \d+ tensors, .*config\.json/m)
  t.true(existsSync(join(out, 'paligemma-prepared.json')))
  t.true(existsSync(join(out, 'tokenizer.json')), 'the tokenizer came along')
  const caption = async (model) => JSON.parse((await runCli(['caption', '--json', '--model', model, '--image', image, '-n', '6'])).stdout).tokenIds
  t.deepEqual(await caption(out), await caption(dir))
  // A prepared f32 folder loads on the CPU in f32 only.
  const q8 = await runCli(['caption', '--model', out, '--image', image, '--dtype', 'q8_0'])
  t.is(q8.code, 1)
  t.regex(q8.stderr, /^paligemma: ERR_MODEL_LOAD: .*prepared for the CPU/m)
  // A non-empty target, a dtype that is not prepared (bf16), and a missing argument.
  const again = await runCli(['quantize', dir, out])
  t.is(again.code, 1)
  t.regex(again.stderr, /ERR_INVALID_ARGUMENT: .*is not empty/)
  const bf16 = await runCli(['quantize', dir, join(tmp, 'prepared-bf16'), '--dtype', 'bf16'])
  t.is(bf16.code, 2)
  t.regex(bf16.stderr, /--dtype must be one of f32, q8_0, q4k/)
  // A q8_0 folder captions like the original loaded with --dtype q8_0.
  const q8dir = join(tmp, 'prepared-q8_0')
  const prepared = await runCli(['quantize', '--dtype', 'q8_0', dir, q8dir])
  t.is(prepared.code, 0, prepared.stderr)
  const q8caption = async (model) => JSON.parse((await runCli(['caption', '--json', '--model', model, '--image', image, '-n', '6', '--dtype', 'q8_0'])).stdout).tokenIds
  t.deepEqual(await q8caption(q8dir), await q8caption(dir))
  const usage = await runCli(['quantize', dir])
  t.is(usage.code, 2)
  t.regex(usage.stderr, /quantize takes <model-dir> <out-dir>/)
})

test('--dtype q8_0, q4k and bf16 (with --vision-dtype) load; an unknown dtype is a usage error', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  for (const dtype of ['q8_0', 'q4k', 'bf16', 'q8_0 --vision-dtype bf16']) {
    const { code, stdout, stderr } = await runCli(['caption', '--json', '--model', dir, '--image', image, '-n', '4', '--dtype', ...dtype.split(' ')])
    t.is(code, 0, `${dtype}: ${stderr}`)
    const result = JSON.parse(stdout)
    t.true(result.tokenIds.length >= 1 && result.tokenIds.length <= 4, dtype)
  }
  const bad = await runCli(['caption', '--model', dir, '--image', image, '--dtype', 'q5'])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /--dtype must be one of f32, f16, bf16, q8_0, q4k/)
  const badVision = await runCli(['caption', '--model', dir, '--image', image, '--vision-dtype', 'f16'])
  t.is(badVision.code, 2)
  t.regex(badVision.stderr, /--vision-dtype must be one of f32, bf16/)
})

test('bench runs the checkout harness (its --help here)', async (t) => {
  const { code, stdout } = await runCli(['bench', '--help'])
  t.is(code, 0)
  t.regex(stdout, /usage: npm run bench/)
})

const image = join(repo, 'testdata', 'e2e-caption', 'image.png')

test('caption streams text on the tiny model with the tiny tokenizer', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  const { code, stdout, stderr } = await runCli(['caption', '--model', dir, '--image', image, '--max-new-tokens', '6'])
  t.is(code, 0, stderr)
  t.true(stdout.endsWith('\n'))
  const json = await runCli(['caption', '--json', '--model', dir, '--image', image, '--max-new-tokens', '6', '--seed', '3'])
  t.is(json.code, 0, json.stderr)
  const result = JSON.parse(json.stdout)
  t.is(result.prompt, 'caption en')
  t.true(result.tokenIds.length >= 1 && result.tokenIds.length <= 6)
  t.true(['eos', 'length'].includes(result.finishReason))
  t.is(`${result.text}\n`, stdout)
  t.is(json.stderr, '')
  // The image may come from stdin.
  const piped = await runCli(['caption', '--model', dir, '--image', '-', '--max-new-tokens', '6'], { input: readFileSync(image) })
  t.is(piped.code, 0, piped.stderr)
  t.is(piped.stdout, stdout)
})

test('ask, ocr and generate run the given prompts', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  for (const [args, prompt] of [
    [['ask', 'what is this?'], 'answer en what is this?'],
    [['ask', '--lang', 'fr', 'qui?'], 'answer fr qui?'],
    [['ocr'], 'ocr'],
    [['generate', '--prompt', 'caption es'], 'caption es'],
  ]) {
    const { code, stdout, stderr } = await runCli([...args, '--json', '--model', dir, '--image', image, '-n', '3'])
    t.is(code, 0, stderr)
    t.is(JSON.parse(stdout).prompt, prompt)
  }
})

test('detect --out writes a PNG', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  const out = join(tmp, 'out', 'boxes.png')
  const { code, stdout, stderr } = await runCli(['detect', '--json', '--model', dir, '--image', image, '--out', out, '-n', '8', 'cat', 'dog'])
  t.is(code, 0, stderr)
  const result = JSON.parse(stdout)
  t.deepEqual(result.labels, ['cat', 'dog'])
  t.true(Array.isArray(result.detections))
  t.is(result.out, out)
  t.deepEqual([...readFileSync(out).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  const text = await runCli(['detect', '--model', dir, '--image', image, '-n', '8', '--labels', 'cat ; dog'])
  t.is(text.code, 0, text.stderr)
})

test('segment --vae --out writes a PNG; without a VAE it is ERR_INVALID_ARGUMENT', async (t) => {
  const dir = fixtureWithTokenizer('pg1-tiny-a')
  const out = join(tmp, 'masks.png')
  const vae = join(repo, 'testdata', 'vae', 'vae-tiny.safetensors')
  const { code, stdout, stderr } = await runCli(['segment', '--json', '--model', dir, '--image', image, '--vae', vae, '--out', out, '-n', '8', 'cat'])
  t.is(code, 0, stderr)
  t.true(Array.isArray(JSON.parse(stdout).segmentations))
  t.deepEqual([...readFileSync(out).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47])
  // A usage error, found before the model loads, naming the flag rather than the API's option.
  const noVae = await runCli(['segment', '--model', dir, '--image', image, 'cat'], { env: { PALIGEMMA_VAE: '' } })
  t.is(noVae.code, 2)
  t.regex(noVae.stderr, /^paligemma: ERR_USAGE: segment needs --vae/m)
})
