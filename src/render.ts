/**
 * Pictures of model output: boxes, labels and masks drawn onto the image, as PNG.
 *
 * @packageDocumentation
 */

import { decodeOptions, imageOptions, nativeImage, processor, settle } from './image.js'
import type { NativeAnnotation } from './image.js'
import { describe, invalid, isRecord } from './options.js'
import type { Detection, ImageInput, ImageOptions, Mask } from './types.js'

/** What {@link drawDetections} draws: a box in pixels and its label (a {@link Detection} is one). */
export type LabeledBox = Pick<Detection, 'label' | 'box'>

/** What {@link drawMasks} draws: a box, its label and a mask when there is one (a `Segmentation` is one). */
export type MaskedDetection = LabeledBox & {
  /** The object's {@link Mask}; without one (`undefined` or `null`) only the box and label are drawn. */
  mask?: Mask | null
}

function coordinate(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw invalid(name, `must be a finite number, got ${describe(value)}`)
  return value
}

function annotation(item: unknown, i: number, withMask: boolean): NativeAnnotation {
  const name = `${withMask ? 'segmentations' : 'detections'}[${i}]`
  if (!isRecord(item) || !isRecord(item.box)) throw invalid(name, `must be an object { label, box: { x, y, width, height } }, got ${describe(item)}`)
  const label = item.label ?? ''
  if (typeof label !== 'string') throw invalid(`${name}.label`, `must be a string, got ${describe(label)}`)
  const x = coordinate(`${name}.box.x`, item.box.x)
  const y = coordinate(`${name}.box.y`, item.box.y)
  const out: NativeAnnotation = {
    label,
    x1: x,
    y1: y,
    x2: x + coordinate(`${name}.box.width`, item.box.width),
    y2: y + coordinate(`${name}.box.height`, item.box.height),
  }
  const mask = withMask ? item.mask : undefined
  if (mask !== undefined && mask !== null) {
    if (!isRecord(mask) || !(mask.data instanceof Uint8Array)) {
      throw invalid(`${name}.mask`, `must be { width, height, data: Uint8Array } or null, got ${describe(mask)}`)
    }
    out.mask = mask.data
  }
  return out
}

async function render(image: ImageInput, items: NativeAnnotation[], options: ImageOptions | undefined): Promise<Buffer> {
  const input = nativeImage(image)
  const decode = decodeOptions(imageOptions(options))
  const binding = processor()
  return settle(() => binding.renderAnnotations(input, decode, items))
}

/**
 * Draws detections onto the image: a coloured outline per box and its label on a tag above it
 * (in a built-in 5×9 pixel font, scaled with the image; characters outside printable ASCII show
 * as `?`). Decoding, drawing and PNG encoding run natively, off the JS thread.
 *
 * @param image - the image the detections belong to (decoded as for the model).
 * @param detections - boxes in pixels of that image, e.g. from `detect` or `parseDetections`.
 * @param options - decoding options; use the same `applyExifOrientation` as for detection.
 * @returns a PNG file, the image's size.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_IMAGE`, `ERR_INVALID_ARGUMENT`.
 */
export async function drawDetections(image: ImageInput, detections: readonly LabeledBox[], options?: ImageOptions): Promise<Buffer> {
  if (!Array.isArray(detections)) throw invalid('detections', `must be an array, got ${describe(detections)}`)
  return render(image, detections.map((d: unknown, i) => annotation(d, i, false)), options)
}

/**
 * Draws segmentations onto the image: each mask as a translucent overlay in the object's colour,
 * then the boxes and labels as {@link drawDetections} does. Objects with `mask: null` get a box
 * only.
 *
 * @param image - the image the masks belong to.
 * @param segmentations - e.g. from `segment` or `decodeSegmentations`; masks must have the image's size.
 * @param options - decoding options.
 * @returns a PNG file, the image's size.
 * @throws A {@link PaliGemmaError} `ERR_INVALID_IMAGE`, `ERR_INVALID_ARGUMENT` (also for a mask
 *   whose size is not the image's).
 */
export async function drawMasks(image: ImageInput, segmentations: readonly MaskedDetection[], options?: ImageOptions): Promise<Buffer> {
  if (!Array.isArray(segmentations)) throw invalid('segmentations', `must be an array, got ${describe(segmentations)}`)
  return render(image, segmentations.map((s: unknown, i) => annotation(s, i, true)), options)
}
