// drawDetections / drawMasks: valid PNGs of the image's size, boxes and overlays where expected.
import { join } from 'node:path'
import { inflateSync } from 'node:zlib'

import test from 'ava'

import { drawDetections, drawMasks, parseDetections } from '../dist/index.js'
import { repo } from './helpers/fixtures.mjs'

const chelsea = join(repo, 'testdata', 'processor', 'chelsea.png')
/** The first palette colour, used for the first label. */
const RED = [230, 25, 75]

/** Checks the PNG structure (signature, chunk CRCs) and returns its IHDR and RGB pixels. */
function readPng(png) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    return c >>> 0
  })
  const crc = (bytes) => {
    let c = ~0
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8)
    return ~c >>> 0
  }
  if (!png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) throw new Error('no PNG signature')
  let at = 8
  let ihdr
  const idat = []
  while (at < png.length) {
    const len = png.readUInt32BE(at)
    const type = png.toString('latin1', at + 4, at + 8)
    const data = png.subarray(at + 8, at + 8 + len)
    if (crc(png.subarray(at + 4, at + 8 + len)) !== png.readUInt32BE(at + 8 + len)) throw new Error(`bad CRC in ${type}`)
    if (type === 'IHDR') ihdr = { width: data.readUInt32BE(0), height: data.readUInt32BE(4), bitDepth: data[8], colorType: data[9] }
    if (type === 'IDAT') idat.push(data)
    at += 12 + len
  }
  return { ...ihdr, raw: inflateSync(Buffer.concat(idat)) }
}

/** RGB of pixel (x, y) of an 8-bit RGB PNG (undoing the scanline filters). */
function pixels(png) {
  const { width, height, raw } = readPng(png)
  const stride = width * 3
  const out = Buffer.alloc(stride * height)
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]
    for (let i = 0; i < stride; i++) {
      const v = raw[y * (stride + 1) + 1 + i]
      const a = i >= 3 ? out[y * stride + i - 3] : 0
      const b = y > 0 ? out[(y - 1) * stride + i] : 0
      const c = i >= 3 && y > 0 ? out[(y - 1) * stride + i - 3] : 0
      const p = a + b - c
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c
      const predictor = [0, a, b, (a + b) >> 1, paeth][filter]
      out[y * stride + i] = (v + predictor) & 0xff
    }
  }
  return (x, y) => [...out.subarray(y * stride + x * 3, y * stride + x * 3 + 3)]
}

test('drawDetections returns a PNG of the image size', async (t) => {
  const detections = parseDetections('<loc0100><loc0200><loc0900><loc0800> cat ; <loc0300><loc0300><loc0450><loc0450> eye', { width: 451, height: 300 })
  const png = await drawDetections(chelsea, detections)
  t.true(Buffer.isBuffer(png))
  t.like(readPng(png), { width: 451, height: 300, bitDepth: 8, colorType: 2 })
})

test('boxes and labels land where the detections say', async (t) => {
  const size = 100
  const raw = { data: new Uint8Array(size * size * 3).fill(128), width: size, height: size, channels: 3 }
  const px = pixels(await drawDetections(raw, [{ label: 'cat', box: { x: 20, y: 50, width: 60, height: 40 } }]))
  t.deepEqual(px(20, 50), RED, 'top-left corner')
  t.deepEqual(px(79, 89), RED, 'bottom-right corner (x + width − 1)')
  t.deepEqual(px(50, 70), [128, 128, 128], 'inside')
  t.deepEqual(px(80, 70), [128, 128, 128], 'right of the box')
  t.deepEqual(px(20, 45), RED, 'label tag above the box')
  t.true([...Array(17).keys()].some((i) => px(21 + i, 45).every((v) => v === 255)), 'white letters on the tag')
})

test('drawMasks overlays masks translucently, in the object colour', async (t) => {
  const [w, h] = [64, 48]
  const raw = { data: new Uint8Array(w * h * 3).fill(100), width: w, height: h, channels: 3 }
  const mask = new Uint8Array(w * h)
  for (let y = 10; y < 30; y++) mask.fill(255, y * w + 8, y * w + 40)
  const segmentations = [
    { label: 'blob', box: { x: 8, y: 10, width: 32, height: 20 }, mask: { width: w, height: h, data: mask } },
    { label: 'no mask', box: { x: 45, y: 30, width: 10, height: 10 }, mask: null },
  ]
  const png = await drawMasks(raw, segmentations)
  t.like(readPng(png), { width: w, height: h })
  const px = pixels(png)
  const inside = px(12, 25)
  t.true(inside[0] > 100 && inside[1] < 100, `blended towards red: ${inside}`)
  t.deepEqual(px(50, 5), [100, 100, 100], 'outside every mask and box')
})

test('bad drawings are refused with the right code', async (t) => {
  const raw = { data: new Uint8Array(4 * 4 * 3), width: 4, height: 4, channels: 3 }
  const box = { x: 0, y: 0, width: 2, height: 2 }
  await t.throwsAsync(drawDetections(Buffer.from('nope'), []), { code: 'ERR_INVALID_IMAGE' })
  await t.throwsAsync(drawDetections(raw, 'cat'), { code: 'ERR_INVALID_ARGUMENT' })
  await t.throwsAsync(drawDetections(raw, [{ label: 'x', box: { ...box, x: Number.NaN } }]), { code: 'ERR_INVALID_ARGUMENT' })
  await t.throwsAsync(drawDetections(raw, [{ label: 7, box }]), { code: 'ERR_INVALID_ARGUMENT' })
  const wrongSize = { width: 3, height: 3, data: new Uint8Array(9) }
  const error = await t.throwsAsync(drawMasks(raw, [{ label: 'x', box, mask: wrongSize }]), { code: 'ERR_INVALID_ARGUMENT' })
  t.regex(error.message, /9 bytes.*4×4/)
  t.like(readPng(await drawDetections(raw, [])), { width: 4, height: 4 })
})
