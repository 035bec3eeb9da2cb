// preprocessImage: parity with Pillow + transformers (testdata/processor), inputs of every kind,
// and ERR_INVALID_IMAGE for every way an image can be bad.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { preprocessImage } from '../dist/index.js'
import { repo } from './helpers/fixtures.mjs'
import { readSafetensors } from './helpers/safetensors.mjs'

const processorDir = join(repo, 'testdata', 'processor')

const files = new Map()

/** One tensor of a .safetensors fixture (each file read once). */
function tensor(path, name) {
  if (!files.has(path)) files.set(path, readSafetensors(path))
  const found = files.get(path)[name]
  if (!found) throw new Error(`${path} has no tensor ${name}`)
  return found
}

/** The reference tensors (meta.json), stored gzipped: 3.8 MB against 11.3. */
const expected = (name) => tensor(join(processorDir, 'expected.safetensors.gz'), name)

/** Largest |a − b| over two equally long arrays. */
function maxDifference(a, b) {
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]))
  return max
}

/**
 * zune-jpeg (the Rust decoder) and Pillow's libjpeg-turbo differ by up to 4 levels on a few
 * pixels of coffee.jpg (see crates/paligemma/tests/image.rs); the resize can only shrink that.
 */
const JPEG_TOLERANCE = (4 * 2) / 255 + 1e-6

/** Index of the first differing value, or -1 (bitwise: -0 ≠ +0, NaN = NaN). */
function firstDifference(a, b) {
  if (a.length !== b.length) return 0
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length)
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length)
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i
  return -1
}

const IMAGES = [
  ['chelsea.png', 'chelsea_png', 451, 300],
  ['coffee.jpg', 'coffee_jpg', 600, 400],
  ['camera_gray.png', 'camera_gray_png', 512, 512],
  ['astronaut_rgba.png', 'astronaut_rgba_png', 512, 512],
  ['tall_gradient.png', 'tall_gradient_png', 100, 700],
]

for (const [file, key, width, height] of IMAGES) {
  const jpeg = file.endsWith('.jpg')
  test(`${file} at 224 equals Pillow's bicubic ${jpeg ? 'within JPEG decoder differences' : 'exactly'}, with the original size`, async (t) => {
    const out = await preprocessImage(join(processorDir, file), 224)
    t.true(out.pixelValues instanceof Float32Array)
    t.is(out.pixelValues.length, 3 * 224 * 224)
    const want = expected(`${key}.pil_bicubic_224`).data
    if (jpeg) t.true(maxDifference(out.pixelValues, want) <= JPEG_TOLERANCE)
    else t.is(firstDifference(out.pixelValues, want), -1)
    t.deepEqual([out.width, out.height], [width, height])
  })
}

test('chelsea.png at 448, from a Buffer, equals Pillow exactly', async (t) => {
  const out = await preprocessImage(readFileSync(join(processorDir, 'chelsea.png')), 448)
  t.is(firstDifference(out.pixelValues, expected('chelsea_png.pil_bicubic_448').data), -1)
})

test('the e2e fixture image gives the pixel values the reference model saw', async (t) => {
  const dir = join(repo, 'testdata', 'e2e-caption')
  const out = await preprocessImage(join(dir, 'image.png'), 224)
  t.is(firstDifference(out.pixelValues, tensor(join(dir, 'expected.safetensors'), 'pixel_values').data), -1)
})

test('raw pixels: RGB, grey and RGBA (alpha dropped, not composited) match the decoded files', async (t) => {
  const rgb = expected('chelsea_png.decoded_rgb_u8').data
  const want = expected('chelsea_png.pil_bicubic_224').data
  const fromRgb = await preprocessImage({ data: rgb, width: 451, height: 300, channels: 3 }, 224)
  t.is(firstDifference(fromRgb.pixelValues, want), -1)
  t.deepEqual([fromRgb.width, fromRgb.height], [451, 300])

  const rgba = new Uint8ClampedArray(451 * 300 * 4)
  for (let i = 0; i < 451 * 300; i++) {
    rgba.set(rgb.subarray(i * 3, i * 3 + 3), i * 4)
    rgba[i * 4 + 3] = i % 251 // any alpha: it must not matter
  }
  const fromRgba = await preprocessImage({ data: rgba, width: 451, height: 300, channels: 4 }, 224)
  t.is(firstDifference(fromRgba.pixelValues, want), -1)

  const grey3 = expected('camera_gray_png.decoded_rgb_u8').data
  const grey = grey3.filter((_, i) => i % 3 === 0)
  const fromGrey = await preprocessImage({ data: grey, width: 512, height: 512, channels: 1 }, 224)
  t.is(firstDifference(fromGrey.pixelValues, expected('camera_gray_png.pil_bicubic_224').data), -1)
})

/** `jpeg` with an APP1/EXIF segment holding only an Orientation tag. */
function withExifOrientation(jpeg, orientation) {
  const tiff = Buffer.from([0x49, 0x49, 0x2a, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, orientation, 0, 0, 0, 0, 0, 0, 0])
  const app1 = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff])
  const marker = Buffer.from([0xff, 0xe1, (app1.length + 2) >> 8, (app1.length + 2) & 0xff])
  return Buffer.concat([jpeg.subarray(0, 2), marker, app1, jpeg.subarray(2)])
}

test('EXIF orientation is ignored unless applyExifOrientation is set', async (t) => {
  const rotated = withExifOrientation(readFileSync(join(processorDir, 'coffee.jpg')), 6) // 90° clockwise
  const plain = await preprocessImage(rotated, 224)
  t.deepEqual([plain.width, plain.height], [600, 400])
  t.true(maxDifference(plain.pixelValues, expected('coffee_jpg.pil_bicubic_224').data) <= JPEG_TOLERANCE)
  const applied = await preprocessImage(rotated, 224, { applyExifOrientation: true })
  t.deepEqual([applied.width, applied.height], [400, 600])
})

test('preprocessing runs off the JS thread', async (t) => {
  const width = 4000
  const height = 3000
  const data = new Uint8Array(width * height * 3)
  for (let i = 0; i < data.length; i += 4099) data[i] = i & 255
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  const started = performance.now()
  const out = await preprocessImage({ data, width, height, channels: 3 }, 896)
  const elapsed = performance.now() - started
  clearInterval(timer)
  t.is(out.pixelValues.length, 3 * 896 * 896)
  t.true(ticks > 0 || elapsed < 5, `the event loop ran ${ticks} timer callbacks during ${elapsed.toFixed(0)} ms`)
})

// ---------------------------------------------------------------------------------------------
// bad images

function crc32(bytes) {
  let crc = ~0
  for (const b of bytes) {
    crc ^= b
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1
  }
  return ~crc >>> 0
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 'latin1')
  data.copy(out, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** A PNG whose (valid) header declares `width × height` RGB pixels, with a tiny IDAT. */
function pngHeader(width, height) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.set([8, 2, 0, 0, 0], 8) // 8-bit RGB, deflate, no filter variant, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', Buffer.from([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

const chelsea = readFileSync(join(processorDir, 'chelsea.png'))
const coffee = readFileSync(join(processorDir, 'coffee.jpg'))
const corruptPng = Buffer.from(chelsea)
for (let i = 200; i < corruptPng.length - 100; i += 97) corruptPng[i] ^= 0x5a

const BAD = [
  ['a truncated PNG', chelsea.subarray(0, chelsea.length >> 1), /PNG|truncated|eof/i],
  ['a truncated JPEG', coffee.subarray(0, coffee.length >> 1), /truncated|JPEG/i],
  ['corrupt PNG data', corruptPng, /PNG|corrupt|CRC/i],
  ['random bytes', Buffer.from('definitely not an image, just text'), /unrecognised image format/],
  ['zero bytes', Buffer.alloc(0), /empty/],
  ['a 100000×100000 PNG header', pngHeader(100_000, 100_000), /100000×100000.*exceeds the limit of 100 megapixels/],
  ['a PNG header of zero width', pngHeader(0, 10), /.+/],
  ['an unsupported format (TIFF)', Buffer.from([0x49, 0x49, 0x2a, 0x00, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]), /unsupported image format/],
  ['zero-sized raw pixels', { data: new Uint8Array(0), width: 0, height: 0, channels: 3 }, /zero-sized/],
  ['raw pixels of the wrong length', { data: new Uint8Array(10), width: 2, height: 2, channels: 3 }, /10 bytes.*needs 12/],
  ['raw pixels with 2 channels', { data: new Uint8Array(8), width: 2, height: 2, channels: 2 }, /1, 3 or 4 channels/],
  ['a missing file', join(processorDir, 'no-such-image.png'), /cannot read/],
]

for (const [what, image, message] of BAD) {
  test(`${what} is ERR_INVALID_IMAGE`, async (t) => {
    const error = await t.throwsAsync(preprocessImage(image, 224), { code: 'ERR_INVALID_IMAGE' })
    t.is(error.name, 'PaliGemmaError')
    t.regex(error.message, message)
  })
}

test('maxPixels lowers the limit; the message names it', async (t) => {
  const error = await t.throwsAsync(preprocessImage(chelsea, 224, { maxPixels: 100_000 }), { code: 'ERR_INVALID_IMAGE' })
  t.regex(error.message, /451×300 .*exceeds the limit of 0\.10 megapixels/)
  const raw = { data: new Uint8Array(30 * 20 * 3), width: 30, height: 20, channels: 3 }
  await t.throwsAsync(preprocessImage(raw, 8, { maxPixels: 599 }), { code: 'ERR_INVALID_IMAGE' })
  t.is((await preprocessImage(raw, 8, { maxPixels: 600 })).width, 30)
})

test('bad arguments are ERR_INVALID_ARGUMENT', async (t) => {
  const bad = [
    [42, 224],
    [null, 224],
    ['', 224],
    [{ data: [1, 2, 3], width: 1, height: 1, channels: 3 }, 224],
    [{ data: new Uint8Array(3), width: 1.5, height: 1, channels: 3 }, 224],
    [chelsea, 0],
    [chelsea, 5000],
    [chelsea, 224, { maxPixels: 0 }],
    [chelsea, 224, { applyExifOrientation: 'yes' }],
    [chelsea, 224, { colour: 'rgb' }],
  ]
  for (const args of bad) {
    await t.throwsAsync(preprocessImage(...args), { code: 'ERR_INVALID_ARGUMENT' }, JSON.stringify(args.slice(1)))
  }
})
