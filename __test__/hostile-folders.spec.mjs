// Hostile model folders through the JS API (issue 9): every bad folder gets ERR_MODEL_LOAD
// with a message that names the problem, without allocating what the file claims, and
// loading and serving still work afterwards.
import { copyFileSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import * as api from '../dist/index.js'
import { f, good, stillServes } from './helpers/hostile.mjs'
import { MB, modelThreadCount, waitFor } from './helpers/memory.mjs'
import { onePixelPng } from './helpers/png.mjs'
import { decodeSafetensors, encodeSafetensors, rewrittenFixture, tempDir } from './helpers/safetensors-write.mjs'

const { PaliGemma, PaliGemmaError } = api

const loaded = PaliGemma.load(f.dir)

test.after.always(async () => {
  await (await loaded).dispose()
})

/** The fixture's tensors, for rewriting. */
const fixtureTensors = () => decodeSafetensors(readFileSync(join(f.dir, 'model.safetensors'))).tensors

/** A copy of the fixture whose model.safetensors is `bytes`. */
function withWeightsFile(bytes, label) {
  const dir = rewrittenFixture(f.dir, { label })
  writeFileSync(join(dir, 'model.safetensors'), bytes)
  return dir
}

function headerOnly(length, body = Buffer.alloc(92)) {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(length)
  return Buffer.concat([b, body])
}

/** A sharded copy of the fixture: vision tensors in shard 2, the rest in shard 1. */
function sharded({ dropShard2 = false, index } = {}) {
  const dir = tempDir('sharded')
  copyFileSync(join(f.dir, 'config.json'), join(dir, 'config.json'))
  const tensors = fixtureTensors()
  const shards = [{}, {}]
  const weightMap = {}
  for (const [name, tensor] of Object.entries(tensors)) {
    const shard = name.startsWith('vision_tower') ? 1 : 0
    shards[shard][name] = tensor
    weightMap[name] = `model-0000${shard + 1}-of-00002.safetensors`
  }
  writeFileSync(join(dir, 'model-00001-of-00002.safetensors'), encodeSafetensors(shards[0]))
  if (!dropShard2) writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), encodeSafetensors(shards[1]))
  writeFileSync(join(dir, 'model.safetensors.index.json'), index ?? JSON.stringify({ metadata: {}, weight_map: weightMap }))
  return dir
}

const config = (edit) => () => rewrittenFixture(f.dir, { editConfig: edit, label: 'config' })
const weights = (edit) => () => rewrittenFixture(f.dir, { edit, label: 'weights' })

// [make the folder, message pattern]; each must fail with ERR_MODEL_LOAD, without allocating what it claims.
const badFolders = {
  'a safetensors header longer than the file': [() => withWeightsFile(headerOnly(1_000_000n), 'long-header'), /model\.safetensors.*(header|length)/],
  'a safetensors header length of 2^63': [() => withWeightsFile(headerOnly(2n ** 63n), 'huge-header'), /model\.safetensors.*header/],
  'a safetensors header that is not JSON': [() => withWeightsFile(headerOnly(50n, Buffer.alloc(92, 0x41)), 'bad-json'), /model\.safetensors.*JSON/],
  'a zero-byte model.safetensors': [() => withWeightsFile(Buffer.alloc(0), 'empty'), /model\.safetensors.*0 bytes/],
  'a model.safetensors cut in half': [
    () => withWeightsFile(readFileSync(join(f.dir, 'model.safetensors')).subarray(0, 300_000), 'truncated'),
    /model\.safetensors/,
  ],
  'a tensor offset past the end of the data': [
    weights((t) => {
      t['language_model.model.norm.weight'].dataOffsets = [0, 10 ** 9]
    }),
    /model\.safetensors.*language_model\.model\.norm\.weight/,
  ],
  'a tensor whose shape disagrees with the config': [
    weights((t) => {
      t['language_model.model.layers.1.mlp.up_proj.weight'].shape = [64, 128]
    }),
    /language_model\.layers\.1\.mlp\.up_proj\.weight.*shape \[64, 128\].*expected \[128, 64\]/,
  ],
  'an embedding with one row too few': [
    weights((t) => {
      const e = t['language_model.model.embed_tokens.weight']
      e.shape = [511, 64]
      e.bytes = e.bytes.subarray(0, 511 * 64 * 4)
    }),
    /embed_tokens\.weight.*\[511, 64\].*expected \[512, 64\]/,
  ],
  'a missing tensor': [
    weights((t) => {
      delete t['language_model.model.layers.1.self_attn.v_proj.weight']
    }),
    /language_model\.layers\.1\.self_attn\.v_proj\.weight.*missing/,
  ],
  'a tensor of an unsupported dtype': [
    weights((t) => {
      t['language_model.model.norm.weight'].dtype = 'I32'
    }),
    /norm\.weight.*dtype I32/,
  ],
  'a shard index naming a missing file': [() => sharded({ dropShard2: true }), /model-00002-of-00002\.safetensors.*does not exist/],
  'a shard index that is not JSON': [() => sharded({ index: '{"weight_map": ' }), /model\.safetensors\.index\.json/],
  'a shard index with an empty weight_map': [() => sharded({ index: '{"weight_map": {}}' }), /weight_map/],
  'no weights at all': [
    () => {
      const dir = tempDir('noweights')
      copyFileSync(join(f.dir, 'config.json'), join(dir, 'config.json'))
      return dir
    },
    /model\.safetensors/,
  ],
  'config.json that is not JSON': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'config' })
    writeFileSync(join(dir, 'config.json'), '{ "model_type": "paligemma", ')
    return dir
  }, /config.*JSON/],
  'config.json that is an array': [config((c) => [c]), /config\.json.*object/],
  'an unknown model_type': [config((c) => ({ ...c, model_type: 'llava' })), /model_type.*llava/],
  'an unknown text model_type': [config((c) => void (c.text_config.model_type = 'gemma3')), /text_config\.model_type.*gemma3/],
  'a string where a size belongs': [config((c) => void (c.text_config.hidden_size = '64')), /text_config\.hidden_size.*"64"/],
  'a negative layer count': [config((c) => void (c.text_config.num_hidden_layers = -2)), /text_config\.num_hidden_layers.*-2/],
  'a fractional layer count': [config((c) => void (c.text_config.num_hidden_layers = 2.5)), /text_config\.num_hidden_layers.*2\.5/],
  'text_config as an array': [config((c) => void (c.text_config = [1])), /text_config.*object/],
  '10^9 decoder layers': [config((c) => void (c.text_config.num_hidden_layers = 1e9)), /text_config\.num_hidden_layers.*1000000000.*maximum/],
  'a vocabulary of 10^12': [config((c) => void (c.text_config.vocab_size = c.vocab_size = 1e12)), /vocab_size.*1000000000000.*maximum/],
  'a vocabulary of 1e300': [config((c) => void (c.text_config.vocab_size = c.vocab_size = 1e300)), /vocab_size/],
  'a hidden size of 10^9': [config((c) => void (c.text_config.hidden_size = 1e9)), /text_config\.hidden_size.*maximum/],
  'an intermediate size of 10^12': [config((c) => void (c.text_config.intermediate_size = 1e12)), /text_config\.intermediate_size.*maximum/],
  '10^9 attention heads': [config((c) => void (c.text_config.num_attention_heads = 1e9)), /num_attention_heads/],
  '10^15 positions': [config((c) => void (c.text_config.max_position_embeddings = 1e15)), /max_position_embeddings.*maximum/],
  'an image size of 100000': [config((c) => void (c.vision_config.image_size = 100000)), /vision_config\.image_size.*maximum/],
  'a zero patch size': [config((c) => void (c.vision_config.patch_size = 0)), /vision_config\.patch_size/],
  '10^9 vision layers': [config((c) => void (c.vision_config.num_hidden_layers = 1e9)), /vision_config\.num_hidden_layers.*maximum/],
  'a malformed tokenizer.json': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), '{"version": "1.0", "model": ')
    return dir
  }, /tokenizer\.json/],
  'an empty tokenizer.json': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), '')
    return dir
  }, /tokenizer\.json/],
  'a tokenizer.json that is a folder': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    mkdirSync(join(dir, 'tokenizer.json'))
    return dir
  }, /tokenizer\.json/],
  'a tokenizer.json that is a dangling link': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    symlinkSync(join(dir, 'no-such-blob'), join(dir, 'tokenizer.json'))
    return dir
  }, /tokenizer\.json/],
  'a tokenizer that does not match the config': [() => {
    const dir = rewrittenFixture(f.dir, { label: 'tok' })
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { type: 'WordLevel', vocab: { a: 0 }, unk_token: 'a' } }))
    return dir
  }, /tokenizer/],
}

for (const [name, [make, message]] of Object.entries(badFolders)) {
  test.serial(`load of a folder with ${name}: ERR_MODEL_LOAD, nothing of its claimed size allocated`, async (t) => {
    const dir = make()
    const threads = modelThreadCount()
    const rss = process.memoryUsage().rss
    const error = await t.throwsAsync(PaliGemma.load(dir), { instanceOf: PaliGemmaError })
    t.is(error.code, 'ERR_MODEL_LOAD', error.message)
    t.regex(error.message, message)
    // Refused from the header or config, before anything of the claimed size is allocated.
    t.true(process.memoryUsage().rss - rss < 64 * MB, 'no large allocation')
    t.true(await waitFor(() => modelThreadCount() === threads), 'the failed load left no thread behind')
    rmSync(dir, { recursive: true, force: true })
  })
}

test.serial('after every bad folder, a good load and the already-loaded model still work', async (t) => {
  const model = await PaliGemma.load(f.dir)
  await stillServes(t, model)
  await model.dispose()
  await stillServes(t, await loaded)
})

test.serial('a folder without tokenizer.json loads; text features say the tokenizer is needed', async (t) => {
  const model = await loaded
  t.false(model.info.hasTokenizer)
  await t.throwsAsync(model.generate({ ...good, stop: ['x'] }), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
  if (typeof api.preprocessImage === 'function') {
    await t.throwsAsync(model.generate({ image: onePixelPng(), prompt: 'caption en' }), { code: 'ERR_INVALID_ARGUMENT', message: /tokenizer\.json/ })
  }
  await stillServes(t, model)
})

test.serial('a nonexistent folder, a file instead of a folder: ERR_MODEL_LOAD naming the path', async (t) => {
  const gone = tempDir('gone')
  await t.throwsAsync(PaliGemma.load(join(gone, 'missing')), { code: 'ERR_MODEL_LOAD', message: /missing.*config\.json|config\.json.*missing/s })
  rmSync(gone, { recursive: true, force: true })
  await t.throwsAsync(PaliGemma.load(join(f.dir, 'config.json')), { code: 'ERR_MODEL_LOAD', message: /config\.json/ })
})
