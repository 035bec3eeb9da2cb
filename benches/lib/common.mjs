// Constants and small helpers shared by the benchmark harness (benches/run.mjs).

import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The `benches/` folder and the repository root. */
export const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const ROOT = path.resolve(HERE, '..')

// The prompt of every peer: image tokens × P, <bos>, these ids (modulo the vocabulary).
export const TEXT_IDS = [21209, 659, 4401, 603, 476, 2204, 576, 573, 108]
export const MODELS = {
  'pg1-3b-224': { preset: 'paligemma-3b-224', seed: 1, title: 'PaliGemma-3B-224' },
  'pg2-3b-448': { preset: 'paligemma2-3b-448', seed: 2, title: 'PaliGemma 2-3B-448' },
}
export const ENGINES = ['paligemma', 'transformers', 'candle-transformers']
export const RESULTS_BEGIN = '<!-- bench:begin (written by `npm run bench -- --write-results`) -->'
export const RESULTS_END = '<!-- bench:end -->'

export const median = (v) => {
  const s = [...v].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}
export const round = (x, digits) => (x === undefined || x === null || Number.isNaN(x) ? null : Number(x.toFixed(digits)))
export const log = (...args) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...args)

/** The prompt of every peer: the image tokens, `<bos>`, then TEXT_IDS (folded into the vocabulary). */
export function promptIds(info) {
  return [...new Array(info.imageTokens).fill(info.imageTokenId), info.bosTokenId, ...TEXT_IDS.map((id) => id % info.vocabSize)]
}

/** The synthetic image of every peer: value i of image b = ((i·7 + b·13) mod 255)/127.5 − 1. */
export function pixels(size, b = 0) {
  const px = new Float32Array(3 * size * size)
  for (let i = 0; i < px.length; i++) px[i] = ((i * 7 + b * 13) % 255) / 127.5 - 1
  return px
}

/**
 * Load options of a bench dtype: a `dtype` (`f32`, `bf16`, `q8_0`, …), or `dtype:vision` for
 * the vision tower in another one (`q8_0:bf16` is `{ dtype: 'q8_0', visionDtype: 'bf16' }`).
 */
export function dtypeOptions(spec) {
  const [dtype, visionDtype] = spec.split(':')
  return visionDtype ? { dtype, visionDtype } : { dtype }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function sh(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }).trim()
  } catch {
    return null
  }
}
