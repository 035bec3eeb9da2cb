// Hand-made PNG files (valid, truncated, corrupt, or with an absurd declared size) for the
// image tests.
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
 * An 8-bit RGB PNG that declares `width × height` and whose IDAT holds `rows` (per row: a
 * filter byte, then RGB). The declared size need not match the data.
 */
export function png(width, height, rows) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type RGB
  const signature = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])
  return Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0))])
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
