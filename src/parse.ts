/**
 * Parsing of detection and segmentation output (`<loc####>` boxes, `<seg###>` mask codes), in
 * the format of the official big_vision / Hugging Face demo. Pure functions, for pipelines that
 * run the model themselves.
 *
 * @packageDocumentation
 */

import { describe, integer, invalid, isRecord } from './options.js'
import type { Detection, ImageSize, ParsedSegmentation } from './types.js'

/**
 * One object, matched from the current position (the demo's `_SEGMENT_DETECT_RE`): any text,
 * four location tokens, optionally sixteen mask tokens, then an optional label up to `;`, `<`
 * or `>`, and an optional `"; "` separator. The demo's `.` stops at line breaks, which would
 * end parsing at the first newline in stray text; `s` lets such text be skipped like any other.
 */
const OBJECT = new RegExp(
  '(.*?)' + '<loc(\\d{4})>'.repeat(4) + '\\s*' + `(?:${'<seg(\\d{3})>'.repeat(16)})?` + '\\s*([^;<>]+)? ?(?:; )?',
  'sy',
)

/** Location bins per axis: `<loc0000>` … `<loc1023>`. */
const LOC_BINS = 1024
/** Entries of the mask codebook: `<seg000>` … `<seg127>`. */
const SEG_CODES = 128

/** Python's `round()`: to the nearest integer, ties to even (what the demo's pixel boxes use). */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value)
  const fraction = value - floor
  if (fraction !== 0.5) return fraction < 0.5 ? floor : floor + 1
  return floor % 2 === 0 ? floor : floor + 1
}

function checkSize(size: unknown): ImageSize {
  if (!isRecord(size)) throw invalid('size', `must be { width, height } of the original image, got ${describe(size)}`)
  return {
    width: integer('width', size.width, 1, 2 ** 32 - 1),
    height: integer('height', size.height, 1, 2 ** 32 - 1),
  }
}

function checkText(text: unknown): string {
  if (typeof text !== 'string') throw invalid('text', `must be the generated text, a string, got ${describe(text)}`)
  return text
}

/**
 * Every well-formed object of `text`, in order. Stray text between objects is skipped; parsing
 * stops where no further object can be matched (as in the demo). Objects whose box is invalid
 * (a bin above 1023, or `ymax ≤ ymin` or `xmax ≤ xmin`, the evaluator's rule) are dropped.
 */
function parseObjects(text: string, size: ImageSize): ParsedSegmentation[] {
  const objects: ParsedSegmentation[] = []
  const re = new RegExp(OBJECT)
  let at = 0
  while (at < text.length) {
    re.lastIndex = at
    const m = re.exec(text)
    // Every match consumes four location tokens, so `at` always advances.
    if (!m) break
    at = re.lastIndex
    const [ymin, xmin, ymax, xmax] = [m[2], m[3], m[4], m[5]].map(Number)
    if (ymin === undefined || xmin === undefined || ymax === undefined || xmax === undefined) continue
    if (Math.max(ymin, xmin, ymax, xmax) >= LOC_BINS || !(ymax > ymin && xmax > xmin)) continue
    // The demo's conversion: bin / 1024 · side, rounded (the image was squashed to a square,
    // so normalised coordinates map straight back onto the original, whatever its aspect).
    const toPx = (bin: number, side: number): number => roundHalfEven((bin / LOC_BINS) * side)
    const [x1, y1, x2, y2] = [toPx(xmin, size.width), toPx(ymin, size.height), toPx(xmax, size.width), toPx(ymax, size.height)]
    const seg = m.slice(6, 22)
    const segIndices = seg.every((s) => s !== undefined) ? seg.map(Number) : null
    objects.push({
      label: (m[22] ?? '').trim(),
      box: { x: x1, y: y1, width: x2 - x1, height: y2 - y1 },
      box1024: [ymin, xmin, ymax, xmax],
      segIndices: segIndices && segIndices.every((v) => v < SEG_CODES) ? segIndices : null,
    })
  }
  return objects
}

/**
 * Parses detection output such as `<loc0256><loc0128><loc0768><loc0896> cat ; <loc…>… dog`
 * into boxes in pixels of the original image. Never throws on model output: malformed parts
 * (short or garbled location tokens, inverted or out-of-range boxes) are skipped. Mask tokens,
 * if any, are ignored.
 *
 * Pixel boxes follow the official demo: `round(bin / 1024 · side)`, with Python's rounding
 * (ties to even).
 *
 * @param text - the generated text (with its `<loc####>` tokens, as `generate` returns it).
 * @param size - the original image's size (`result.image` of an `{ image, prompt }` request).
 * @returns the objects in output order; empty when there are none.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` if `text` is not a string or `size` is
 *   not positive integers.
 */
export function parseDetections(text: string, size: ImageSize): Detection[] {
  const objects = parseObjects(checkText(text), checkSize(size))
  return objects.map(({ label, box, box1024 }) => ({ label, box, box1024 }))
}

/**
 * Parses segmentation output (four `<loc####>` then sixteen `<seg###>` tokens per object, then
 * the label) into boxes and mask codebook indices. Objects without a complete, valid sequence of
 * sixteen mask tokens keep their box, with `segIndices: null`. Never throws on model output.
 * Turn the indices into masks with `decodeSegmentations`.
 *
 * @param text - the generated text.
 * @param size - the original image's size.
 * @returns the objects in output order; empty when there are none.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` for a non-string `text` or a bad `size`.
 */
export function parseSegmentations(text: string, size: ImageSize): ParsedSegmentation[] {
  return parseObjects(checkText(text), checkSize(size))
}
