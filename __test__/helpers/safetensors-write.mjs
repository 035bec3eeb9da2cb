// A small safetensors writer (and fixture rewriters) for the hostile-input and memory tests.
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const BYTES = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, U8: 1 }

/**
 * Encodes tensors as a .safetensors file. `tensors` maps a name to `{ dtype, shape, bytes }`
 * (raw little-endian data) or `{ shape, data: Float32Array }` (F32).
 */
export function encodeSafetensors(tensors, metadata = { format: 'pt' }) {
  const header = {}
  const parts = []
  let offset = 0
  for (const [name, t] of Object.entries(tensors)) {
    const dtype = t.dtype ?? 'F32'
    const bytes = t.bytes ?? Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)
    header[name] = { dtype, shape: t.shape, data_offsets: t.dataOffsets ?? [offset, offset + bytes.length] }
    parts.push(bytes)
    offset += bytes.length
  }
  if (metadata) header.__metadata__ = metadata
  let json = JSON.stringify(header)
  // Pad the header to a multiple of 8 bytes, like the reference writer.
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const length = Buffer.alloc(8)
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  return Buffer.concat([length, Buffer.from(json), ...parts])
}

/** Parses a .safetensors file into `{ name: { dtype, shape, bytes } }` (in header order) and metadata. */
export function decodeSafetensors(buf) {
  const headerLen = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'))
  const base = 8 + headerLen
  const tensors = {}
  let metadata
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = info
      continue
    }
    const [begin, end] = info.data_offsets
    tensors[name] = { dtype: info.dtype, shape: info.shape, bytes: buf.subarray(base + begin, base + end) }
  }
  return { tensors, metadata }
}

/** A new temporary folder. */
export function tempDir(label) {
  return mkdtempSync(join(tmpdir(), `paligemma-${label}-`))
}

/**
 * A copy of a fixture model folder in a temporary folder, after `edit` changed its tensors
 * (`edit(tensors)` may mutate or return a new map) and `editConfig` its config.
 */
export function rewrittenFixture(fixtureDir, { edit, editConfig, label = 'edited' } = {}) {
  const dir = tempDir(label)
  const config = JSON.parse(readFileSync(join(fixtureDir, 'config.json'), 'utf8'))
  writeFileSync(join(dir, 'config.json'), JSON.stringify(editConfig ? (editConfig(config) ?? config) : config))
  if (edit) {
    const { tensors, metadata } = decodeSafetensors(readFileSync(join(fixtureDir, 'model.safetensors')))
    const edited = edit(tensors) ?? tensors
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(edited, metadata))
  } else {
    copyFileSync(join(fixtureDir, 'model.safetensors'), join(dir, 'model.safetensors'))
  }
  return dir
}

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** `n` small random weights (uniform in ±scale), fast enough for tens of millions of values. */
function randomWeights(n, rand, scale) {
  const out = new Float32Array(n)
  // A xorshift stream seeded from `rand`: much faster than calling `rand` per value.
  let x = (rand() * 0xffffffff) | 1
  const k = (2 * scale) / 4294967296
  for (let i = 0; i < n; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    out[i] = (x >>> 0) * k - scale
  }
  return out
}

/**
 * Writes a random PaliGemma (Gemma decoder) checkpoint into a new temporary folder:
 * `config.json` + `model.safetensors`, f32. Returns `{ dir, weightBytes, config }`.
 * The defaults (text width 512, vocab 4096, 4 decoder layers, MLP 2048) make ~80 MB of weights.
 */
export function writeSyntheticModel({
  hidden = 512,
  vocab = 4096,
  layers = 4,
  intermediate = 2048,
  heads = 8,
  kvHeads = 1,
  headDim = 64,
  visionHidden = 64,
  visionLayers = 1,
  imageSize = 32,
  patch = 8,
  positions = 512,
  seed = 1,
} = {}) {
  const rand = prng(seed)
  const w = (...shape) => ({ shape, data: randomWeights(shape.reduce((a, b) => a * b, 1), rand, 0.05) })
  const ones = (n) => ({ shape: [n], data: new Float32Array(n).fill(1) })
  const zeros = (n) => ({ shape: [n], data: new Float32Array(n) })
  const imageToken = vocab - 1
  const t = {}
  t['language_model.model.embed_tokens.weight'] = w(vocab, hidden)
  for (let l = 0; l < layers; l++) {
    const p = `language_model.model.layers.${l}.`
    t[`${p}input_layernorm.weight`] = zeros(hidden)
    t[`${p}post_attention_layernorm.weight`] = zeros(hidden)
    t[`${p}self_attn.q_proj.weight`] = w(heads * headDim, hidden)
    t[`${p}self_attn.k_proj.weight`] = w(kvHeads * headDim, hidden)
    t[`${p}self_attn.v_proj.weight`] = w(kvHeads * headDim, hidden)
    t[`${p}self_attn.o_proj.weight`] = w(hidden, heads * headDim)
    t[`${p}mlp.gate_proj.weight`] = w(intermediate, hidden)
    t[`${p}mlp.up_proj.weight`] = w(intermediate, hidden)
    t[`${p}mlp.down_proj.weight`] = w(hidden, intermediate)
  }
  t['language_model.model.norm.weight'] = zeros(hidden)
  t['multi_modal_projector.linear.weight'] = w(hidden, visionHidden)
  t['multi_modal_projector.linear.bias'] = zeros(hidden)
  const v = 'vision_tower.vision_model.'
  t[`${v}embeddings.patch_embedding.weight`] = w(visionHidden, 3, patch, patch)
  t[`${v}embeddings.patch_embedding.bias`] = zeros(visionHidden)
  t[`${v}embeddings.position_embedding.weight`] = w((imageSize / patch) ** 2, visionHidden)
  for (let l = 0; l < visionLayers; l++) {
    const p = `${v}encoder.layers.${l}.`
    for (const norm of ['layer_norm1', 'layer_norm2']) {
      t[`${p}${norm}.weight`] = ones(visionHidden)
      t[`${p}${norm}.bias`] = zeros(visionHidden)
    }
    t[`${p}mlp.fc1.weight`] = w(2 * visionHidden, visionHidden)
    t[`${p}mlp.fc1.bias`] = zeros(2 * visionHidden)
    t[`${p}mlp.fc2.weight`] = w(visionHidden, 2 * visionHidden)
    t[`${p}mlp.fc2.bias`] = zeros(visionHidden)
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      t[`${p}self_attn.${proj}.weight`] = w(visionHidden, visionHidden)
      t[`${p}self_attn.${proj}.bias`] = zeros(visionHidden)
    }
  }
  t[`${v}post_layernorm.weight`] = ones(visionHidden)
  t[`${v}post_layernorm.bias`] = zeros(visionHidden)
  const config = {
    architectures: ['PaliGemmaForConditionalGeneration'],
    model_type: 'paligemma',
    bos_token_id: 2,
    eos_token_id: 1,
    pad_token_id: 0,
    image_token_index: imageToken,
    hidden_size: hidden,
    projection_dim: hidden,
    vocab_size: vocab,
    text_config: {
      model_type: 'gemma',
      hidden_size: hidden,
      intermediate_size: intermediate,
      num_hidden_layers: layers,
      num_attention_heads: heads,
      num_key_value_heads: kvHeads,
      head_dim: headDim,
      max_position_embeddings: positions,
      rms_norm_eps: 1e-6,
      vocab_size: vocab,
      num_image_tokens: (imageSize / patch) ** 2,
    },
    vision_config: {
      model_type: 'siglip_vision_model',
      hidden_size: visionHidden,
      intermediate_size: 2 * visionHidden,
      num_hidden_layers: visionLayers,
      num_attention_heads: 4,
      num_channels: 3,
      image_size: imageSize,
      patch_size: patch,
      projection_dim: hidden,
      layer_norm_eps: 1e-6,
    },
  }
  const dir = tempDir('synthetic')
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 1))
  const file = encodeSafetensors(t)
  writeFileSync(join(dir, 'model.safetensors'), file)
  const weightBytes = Object.values(t).reduce((sum, x) => sum + x.data.byteLength, 0)
  return { dir, weightBytes, config, imageTokenId: imageToken, imageTokens: (imageSize / patch) ** 2 }
}
