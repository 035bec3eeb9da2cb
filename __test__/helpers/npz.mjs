// A minimal `.npz` writer (what `numpy.savez` produces): a zip archive, entries STORED
// (uncompressed), one `<name>.npy` (format 1.0, little-endian float32) per array.
import { writeFileSync } from 'node:fs'

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** CRC-32 (zip's) of `bytes`. */
export function crc32(bytes) {
  let c = 0xffffffff
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

/** One `.npy` file (format 1.0) holding `data` (a Float32Array) with `shape`. */
export function npy(shape, data) {
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${dims}, }`
  const unpadded = 10 + header.length + 1
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n'
  const prefix = Buffer.alloc(10)
  Buffer.from([0x93, ...Buffer.from('NUMPY'), 1, 0]).copy(prefix)
  prefix.writeUInt16LE(header.length, 8)
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  return Buffer.concat([prefix, Buffer.from(header, 'latin1'), body])
}

/** A STORED zip of `entries` (`[{ name, bytes }]`). */
export function zip(entries) {
  const locals = []
  const centrals = []
  let offset = 0
  for (const { name, bytes } of entries) {
    const nameBytes = Buffer.from(name, 'utf8')
    const crc = crc32(bytes)
    const local = Buffer.alloc(30)
    local.writeUInt32LE(0x04034b50, 0)
    local.writeUInt16LE(20, 4) // version needed
    local.writeUInt16LE(0, 6) // flags
    local.writeUInt16LE(0, 8) // STORED
    local.writeUInt16LE(0, 10) // time
    local.writeUInt16LE(0x21, 12) // date: 1980-01-01
    local.writeUInt32LE(crc, 14)
    local.writeUInt32LE(bytes.length, 18)
    local.writeUInt32LE(bytes.length, 22)
    local.writeUInt16LE(nameBytes.length, 26)
    local.writeUInt16LE(0, 28)
    locals.push(local, nameBytes, bytes)
    const central = Buffer.alloc(46)
    central.writeUInt32LE(0x02014b50, 0)
    central.writeUInt16LE(20, 4) // version made by
    central.writeUInt16LE(20, 6)
    central.writeUInt16LE(0, 8)
    central.writeUInt16LE(0, 10)
    central.writeUInt16LE(0, 12)
    central.writeUInt16LE(0x21, 14)
    central.writeUInt32LE(crc, 16)
    central.writeUInt32LE(bytes.length, 20)
    central.writeUInt32LE(bytes.length, 24)
    central.writeUInt16LE(nameBytes.length, 28)
    central.writeUInt32LE(offset, 42)
    centrals.push(central, nameBytes)
    offset += 30 + nameBytes.length + bytes.length
  }
  const directory = Buffer.concat(centrals)
  const end = Buffer.alloc(22)
  end.writeUInt32LE(0x06054b50, 0)
  end.writeUInt16LE(entries.length, 8)
  end.writeUInt16LE(entries.length, 10)
  end.writeUInt32LE(directory.length, 12)
  end.writeUInt32LE(offset, 16)
  return Buffer.concat([...locals, directory, end])
}

/** Writes `arrays` (`{ name: { shape, data: Float32Array } }`) as an `.npz` at `path`. */
export function writeNpz(path, arrays) {
  writeFileSync(path, zip(Object.entries(arrays).map(([name, { shape, data }]) => ({ name: `${name}.npy`, bytes: npy(shape, data) }))))
}
