// Hand-made PNG files (valid, truncated, corrupt, or with an absurd declared size) for the
// image tests.
import { pipeline } from 'node:stream/promises'
import * as zlib from 'node:zlib'

import { prng } from './safetensors-write.mjs'

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

/** CRC-32 as PNG uses it (zlib.crc32 only exists from Node 20.15 / 22.2). */
function crc32(bytes) {
  if (typeof zlib.crc32 === 'function') return zlib.crc32(bytes)
  let c = 0xffffffff
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function chunk(type, data) {
  const length = Buffer.alloc(4)
  length.writeUInt32BE(data.length)
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(body))
  return Buffer.concat([length, body, crc])
}

/**
 * A PNG that declares `width × height` and whose IDAT holds `rows` (per row: a filter byte,
 * then the samples), 8-bit RGB unless `bitDepth`/`colorType` say otherwise (colour type 0 is
 * grey). The declared size need not match the data. `rows` may also be the IDAT payload
 * already deflated (`deflated: true`), for images too large to hold uncompressed.
 */
export function png(width, height, rows, { bitDepth = 8, colorType = 2, deflated = false } = {}) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = bitDepth
  ihdr[9] = colorType
  const signature = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])
  const idat = deflated ? rows : zlib.deflateSync(rows)
  return Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))])
}

/**
 * A grey PNG of `width × height` whose rows are all `row` (filter byte included), deflated a
 * block of rows at a time so that the uncompressed image (up to hundreds of MB) never exists
 * in memory. Constant rows compress about 1000:1, so the result is small.
 */
export async function uniformRowsPng(width, height, row, { bitDepth = 8 } = {}) {
  const rowsPerBlock = Math.max(1, Math.floor((1 << 20) / row.length))
  const block = Buffer.concat(Array.from({ length: rowsPerBlock }, () => row))
  async function* rows() {
    for (let left = height; left > 0; left -= rowsPerBlock) {
      yield left >= rowsPerBlock ? block : block.subarray(0, left * row.length)
    }
  }
  const parts = []
  await pipeline(rows, zlib.createDeflate({ level: 9 }), async (deflated) => {
    for await (const part of deflated) parts.push(part)
  })
  return png(width, height, Buffer.concat(parts), { bitDepth, colorType: 0, deflated: true })
}

/** A valid 1×1 PNG. */
export function onePixelPng() {
  return png(1, 1, Buffer.from([0, 200, 30, 60]))
}

/** A valid `side × side` PNG of seeded noise (so it compresses badly and truncation bites). */
export function noisyPng(side) {
  const rand = prng(side)
  const stride = 1 + 3 * side
  const rows = Buffer.alloc(side * stride)
  for (let i = 0; i < rows.length; i++) rows[i] = i % stride === 0 ? 0 : Math.floor(rand() * 256)
  return png(side, side, rows)
}
