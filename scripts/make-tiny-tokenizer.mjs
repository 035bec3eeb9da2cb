#!/usr/bin/env node
// Builds testdata/tokenizers/tiny/tokenizer.json: a 512-entry tokenizer for the tiny fixture
// models (testdata/reference/*-tiny-*: vocab 512, <image> = 500). It copies Gemma's layout and
// pipeline (BPE with byte fallback, " " -> "▁" normaliser, no dummy prefix, Replace/ByteFallback/
// Fuse decoder) so code tested on it behaves as on the real 256k tokenizer, while the file stays
// a few kB and can be committed.
//
// Usage: node scripts/make-tiny-tokenizer.mjs [out tokenizer.json]
// The output is deterministic; rerunning it must leave the committed file unchanged.

import { writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const VOCAB_SIZE = 512;
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2] ?? join(root, 'testdata/tokenizers/tiny/tokenizer.json');

// Fixed ids shared with the fixture configs and with Gemma (spec §3.3).
const fixed = new Map([
  [0, '<pad>'], [1, '<eos>'], [2, '<bos>'], [3, '<unk>'], [4, '<mask>'],
  [106, '<start_of_turn>'], [107, '<end_of_turn>'], [108, '\n'], [109, '\n\n'],
  [500, '<image>'],
]);
const special = new Set(['<pad>', '<eos>', '<bos>', '<unk>', '<start_of_turn>', '<end_of_turn>', '<image>']);
// All 256 byte-fallback pieces, like Gemma, so any text encodes and multi-byte characters can be
// split across tokens.
const BYTES_START = 110;
for (let b = 0; b < 256; b++) {
  fixed.set(BYTES_START + b, `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
}

// Ordinary pieces fill the remaining ids in order. Multi-character pieces are built by merging
// their prefix with their last character, so every prefix is itself a piece (BPE can only reach
// a piece through merges).
const chars = [
  '▁', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ', ...'0123456789',
  ...'.,!?;:\'"-()/_', 'é', 'ü', 'ß', 'ñ', '€', '→', '日', '本', '猫', 'ว', '่', 'า',
];
const words = [
  '▁a', '▁the', '▁cat', '▁dog', '▁on', '▁in', '▁is', '▁of', '▁and', '▁en', '▁fr', '▁de',
  'caption', 'answer', 'describe', 'detect', 'segment', 'ocr', '▁what', '▁red', '▁blue',
  'ว่า', '日本', '▁café', '▁→', '▁yes', '▁no', '▁one', '▁two', '▁man', '▁car', '▁sky',
  '▁tree', '▁with', '▁this', '▁that', '▁photo', '▁green', '▁black', '▁white', '▁table',
  '▁there', '▁where', '▁sitting', '▁standing',
];

const pieces = [];
const known = new Set(fixed.values());
const merges = [];
function addPiece(p) {
  if (known.has(p)) return;
  const cs = [...p];
  if (cs.length > 1) {
    const left = cs.slice(0, -1).join('');
    addPiece(left);
    addPiece(cs[cs.length - 1]);
    merges.push([left, cs[cs.length - 1]]);
  }
  known.add(p);
  pieces.push(p);
}
chars.forEach(addPiece);
words.forEach(addPiece);

const vocab = {};
let next = 0;
for (let id = 0; id < VOCAB_SIZE; id++) {
  let piece = fixed.get(id);
  if (piece === undefined) {
    if (next >= pieces.length) {
      // Unused ids still need a piece; name them like Gemma's reserved tokens.
      piece = `<unused${id}>`;
    } else {
      piece = pieces[next++];
    }
  }
  vocab[piece] = id;
}
if (next < pieces.length) {
  throw new Error(`${pieces.length - next} pieces do not fit in ${VOCAB_SIZE} ids`);
}

const addedToken = (id, content) => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false,
  special: special.has(content),
});
const added = [...fixed.entries()]
  .filter(([, c]) => c.startsWith('<') && c.endsWith('>') && !c.startsWith('<0x'))
  .sort((a, b) => a[0] - b[0])
  .map(([id, c]) => addedToken(id, c));

const tokenizer = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: added,
  normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
  pre_tokenizer: null,
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: '<bos>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<bos>': { id: '<bos>', ids: [2], tokens: ['<bos>'] } },
  },
  decoder: {
    type: 'Sequence',
    decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
    ],
  },
  model: {
    type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
    end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false,
    vocab, merges,
  },
};

mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(tokenizer, null, 1) + '\n');
console.log(`wrote ${out}: ${Object.keys(vocab).length} entries, ${pieces.length} pieces, ${merges.length} merges`);
