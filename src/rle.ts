/**
 * Masks as run lengths, for JSON: COCO's uncompressed RLE (`{ size: [height, width], counts }`),
 * which `pycocotools.mask.frPyObjects` reads and a browser decodes in a few lines. A 640×480
 * mask of one blob is a few dozen numbers instead of 300 KB of bytes.
 *
 * @packageDocumentation
 */

import { PaliGemmaError } from './errors.js'
import { describe, invalid, isRecord } from './options.js'
import type { Mask, Segmentation } from './types.js'

/**
 * A binary mask in COCO's uncompressed run-length encoding. The pixels are read **column by
 * column** (x outer, y inner: COCO's Fortran order), and `counts` alternates runs of outside
 * (0) and inside (1) pixels, starting with outside (a mask whose first pixel is inside starts
 * with a 0-length run). The counts add up to `height × width`.
 */
export interface RleMask {
  /** `[height, width]`, COCO's order. */
  size: [number, number]
  /** Run lengths, outside first. */
  counts: number[]
}

/** A {@link Segmentation} with its mask as COCO RLE, for JSON (HTTP responses, JSONL, jobs). */
export interface RleSegmentation extends Omit<Segmentation, 'mask'> {
  /** The mask at the image's size, or `null` when the object has none. */
  mask: RleMask | null
}

/**
 * Segmentations with their masks as COCO RLE.
 *
 * @param segmentations - from `segment` or `decodeSegmentations`.
 * @returns the same objects, masks encoded with {@link maskToRle}.
 */
export function segmentationsToRle(segmentations: readonly Segmentation[]): RleSegmentation[] {
  return segmentations.map((s) => ({ ...s, mask: s.mask ? maskToRle(s.mask) : null }))
}

/**
 * Encodes a {@link Mask} (255 inside, 0 outside; any non-zero byte counts as inside) as COCO RLE.
 *
 * @param mask - a mask from `segment` or `decodeSegmentations`.
 * @returns its runs.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` when `data` is not `width × height` bytes.
 */
export function maskToRle(mask: Mask): RleMask {
  checkMask(mask)
  const { width, height, data } = mask
  const counts: number[] = []
  let inside = false
  let run = 0
  for (let x = 0; x < width; x++) {
    for (let i = x, end = x + height * width; i < end; i += width) {
      if (data[i] !== 0 !== inside) {
        counts.push(run)
        inside = !inside
        run = 0
      }
      run++
    }
  }
  counts.push(run)
  return { size: [height, width], counts }
}

/**
 * Decodes COCO RLE back into a {@link Mask} (255 inside, 0 outside).
 *
 * @param rle - `{ size: [height, width], counts }`, uncompressed.
 * @returns the mask, row-major.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT` when the counts are not non-negative
 *   integers adding up to `height × width`.
 */
export function rleToMask(rle: RleMask): Mask {
  if (!isRecord(rle) || !Array.isArray(rle.size) || !Array.isArray(rle.counts)) {
    throw invalid('rle', `must be { size: [height, width], counts: number[] }, got ${describe(rle)}`)
  }
  const [height, width] = rle.size
  if (!isDimension(height) || !isDimension(width)) throw invalid('rle.size', `must be two non-negative integers, got ${describe(rle.size)}`)
  const total = height * width
  const data = new Uint8Array(total)
  let position = 0
  rle.counts.forEach((count, i) => {
    if (!isDimension(count) || position + count > total) {
      throw invalid(`rle.counts[${i}]`, `must be a non-negative integer within the ${total} pixels, got ${describe(count)}`)
    }
    if (i % 2 === 1) {
      // Column-major position p is pixel (x = p / height, y = p % height).
      for (let p = position; p < position + count; p++) data[(p % height) * width + Math.floor(p / height)] = 255
    }
    position += count
  })
  if (position !== total) throw invalid('rle.counts', `add up to ${position}, not height × width = ${total}`)
  return { width, height, data }
}

function isDimension(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
}

function checkMask(mask: unknown): asserts mask is Mask {
  if (!isRecord(mask) || !(mask.data instanceof Uint8Array) || !isDimension(mask.width) || !isDimension(mask.height)) {
    throw invalid('mask', `must be { width, height, data: Uint8Array }, got ${describe(mask)}`)
  }
  if (mask.data.length !== mask.width * mask.height) {
    throw new PaliGemmaError('ERR_INVALID_ARGUMENT', `invalid argument \`mask\`: data has ${mask.data.length} bytes, not width × height = ${mask.width * mask.height}`)
  }
}
