// The tiny reference models and their recorded inputs/outputs.
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { readSafetensors } from './safetensors.mjs'

export const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const FIXTURES = ['pg1-tiny-a', 'pg2-tiny-a']

export function fixtureDir(name) {
  return join(repo, 'testdata', 'reference', name)
}

/** Inputs and expected outputs of a fixture model. */
export function fixture(name) {
  const dir = fixtureDir(name)
  const inputs = readSafetensors(join(dir, 'inputs.safetensors'))
  const expected = readSafetensors(join(dir, 'expected.safetensors'))
  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'))
  return {
    dir,
    meta,
    inputIds: inputs.input_ids.data,
    pixelValues: inputs.pixel_values.data,
    generatedIds: inputs.generated_ids.data,
    prefillLogits: expected.prefill_logits,
  }
}

/** A copy of a fixture model folder with the tiny tokenizer added. */
export function fixtureWithTokenizer(name) {
  const dir = mkdtempSync(join(tmpdir(), `paligemma-${name}-`))
  for (const file of ['config.json', 'model.safetensors']) copyFileSync(join(fixtureDir(name), file), join(dir, file))
  copyFileSync(join(repo, 'testdata', 'tokenizers', 'tiny', 'tokenizer.json'), join(dir, 'tokenizer.json'))
  return dir
}

/**
 * A copy of `fixtureWithTokenizer(name)` whose context holds `positions` tokens: long enough that
 * a generation outlives a consumer that has fallen behind (the tiny models make ~13 tokens per
 * ms on a worker thread, so a 512-position context can run out before a busy loop reacts).
 */
export function longContextFixture(name, positions = 8192) {
  const dir = fixtureWithTokenizer(name)
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  config.text_config.max_position_embeddings = positions
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config))
  return dir
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
