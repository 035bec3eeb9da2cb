// Drawing PaliGemma's structured results over an image, in the browser: labelled boxes for
// detections, translucent masks (COCO RLE from the server) for segmentations. The page and the
// browser test both draw through `drawAnnotations`, so what the test checks is what users see.

/** Distinct, readable colours, one per object in turn. */
export const COLOURS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#f032e6', '#9a6324']

/**
 * Decodes COCO uncompressed RLE (`{size: [height, width], counts}`, column-major, outside
 * first) into a row-major array of 0/1.
 * @param {{size: [number, number], counts: number[]}} rle
 * @returns {{width: number, height: number, data: Uint8Array}}
 */
export function decodeRle(rle) {
  const [height, width] = rle.size
  const data = new Uint8Array(width * height)
  let position = 0
  rle.counts.forEach((count, i) => {
    if (i % 2 === 1) for (let p = position; p < position + count; p++) data[(p % height) * width + Math.floor(p / height)] = 1
    position += count
  })
  return { width, height, data }
}

/**
 * The objects of a result, each with its colour: `{label, box: {x, y, width, height}, mask?}`.
 * @param {{detections?: object[], segmentations?: object[]} | undefined} result
 */
export function objectsOf(result) {
  const list = result?.detections ?? result?.segmentations ?? []
  return list.map((object, i) => ({ ...object, colour: COLOURS[i % COLOURS.length] }))
}

/**
 * Draws `objects` onto `canvas`, which has the image's pixel size: masks first (45 % opaque),
 * then boxes and labels; the `highlight` index gets a thicker box and an opaque label.
 * @param {HTMLCanvasElement} canvas
 * @param {ReturnType<typeof objectsOf>} objects
 * @param {number} [highlight]
 */
export function drawAnnotations(canvas, objects, highlight = -1) {
  const ctx = canvas.getContext('2d')
  const { width, height } = canvas
  ctx.clearRect(0, 0, width, height)
  const line = Math.max(2, Math.round(Math.min(width, height) / 200))
  for (const object of objects) {
    if (!object.mask) continue
    // Decoded once per object: a hover redraws everything, and only the boxes change.
    object.maskCanvas ??= maskCanvas(object.mask, object.colour)
    ctx.drawImage(object.maskCanvas, 0, 0, width, height)
  }
  const fontSize = Math.max(12, Math.round(Math.min(width, height) / 28))
  ctx.font = `${fontSize}px system-ui, sans-serif`
  ctx.textBaseline = 'top'
  objects.forEach((object, i) => {
    const { x, y, width: w, height: h } = object.box
    const strong = i === highlight
    ctx.lineWidth = strong ? line * 2 : line
    ctx.strokeStyle = object.colour
    ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, Math.max(0, w - ctx.lineWidth), Math.max(0, h - ctx.lineWidth))
    const text = object.label || '?'
    const textWidth = ctx.measureText(text).width + 8
    const labelY = y >= fontSize + 6 ? y - fontSize - 6 : y
    ctx.globalAlpha = strong ? 1 : 0.85
    ctx.fillStyle = object.colour
    ctx.fillRect(x, labelY, textWidth, fontSize + 6)
    ctx.globalAlpha = 1
    ctx.fillStyle = labelInk(object.colour)
    ctx.fillText(text, x + 4, labelY + 3)
  })
}

/** A mask as a canvas of its own, 45 % opaque in `colour` (putImageData ignores compositing). */
function maskCanvas(rle, colour) {
  const mask = decodeRle(rle)
  const canvas = document.createElement('canvas')
  canvas.width = mask.width
  canvas.height = mask.height
  const ctx = canvas.getContext('2d')
  const pixels = ctx.createImageData(mask.width, mask.height)
  const [r, g, b] = hexToRgb(colour)
  for (let i = 0; i < mask.data.length; i++) if (mask.data[i]) pixels.data.set([r, g, b, 115], i * 4)
  ctx.putImageData(pixels, 0, 0)
  return canvas
}

/**
 * The index of the smallest box under image pixel (`x`, `y`), or -1.
 * @param {ReturnType<typeof objectsOf>} objects
 */
export function objectAt(objects, x, y) {
  let best = -1
  let bestArea = Infinity
  objects.forEach((o, i) => {
    const { box } = o
    const area = box.width * box.height
    if (x >= box.x && x < box.x + box.width && y >= box.y && y < box.y + box.height && area < bestArea) {
      best = i
      bestArea = area
    }
  })
  return best
}

/** Black or white, whichever contrasts more with `hex` (WCAG relative luminance). */
export function labelInk(hex) {
  const [r, g, b] = hexToRgb(hex).map((c) => {
    const v = c / 255
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4
  })
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
  // Contrast with white is 1.05 / (L + 0.05); with black (L + 0.05) / 0.05.
  return 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.05 ? '#ffffff' : '#000000'
}

function hexToRgb(hex) {
  const n = Number.parseInt(hex.slice(1), 16)
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255]
}
