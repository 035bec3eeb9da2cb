// Minimal safetensors reader for test fixtures: an 8-byte little-endian header length, a JSON
// header, then raw little-endian tensor data. A path ending in .gz is gunzipped first.
import { readFileSync } from 'node:fs'
import { endianness } from 'node:os'
import { gunzipSync } from 'node:zlib'

const DTYPES = {
  F32: { bytes: 4, read: (view, offset) => view.getFloat32(offset, true) },
  F64: { bytes: 8, read: (view, offset) => view.getFloat64(offset, true) },
  I64: { bytes: 8, read: (view, offset) => Number(view.getBigInt64(offset, true)) },
  I32: { bytes: 4, read: (view, offset) => view.getInt32(offset, true) },
  U8: { bytes: 1, read: (view, offset) => view.getUint8(offset) },
}
/** The dtypes read into typed arrays (the rest into number[]). */
const LITTLE_ENDIAN = endianness() === 'LE'
const TYPED = { F32: Float32Array, U8: Uint8Array }

/** Reads every tensor of a .safetensors file as `{ dtype, shape, data }` (F32 → Float32Array, U8 → Uint8Array, other ints → number[]). */
export function readSafetensors(path) {
  const raw = readFileSync(path)
  const buf = path.endsWith('.gz') ? gunzipSync(raw) : raw
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const headerLen = Number(view.getBigUint64(0, true))
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'))
  const base = 8 + headerLen
  const tensors = {}
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const dtype = DTYPES[info.dtype]
    if (!dtype) throw new Error(`${path}: tensor ${name} has unsupported dtype ${info.dtype}`)
    const [begin, end] = info.data_offsets
    const count = (end - begin) / dtype.bytes
    const Typed = TYPED[info.dtype]
    let data
    if (Typed && LITTLE_ENDIAN) {
      // A copy of the bytes (aligned, whatever the offset in the file) viewed as the type.
      data = new Typed(buf.buffer.slice(buf.byteOffset + base + begin, buf.byteOffset + base + end))
    } else {
      data = Typed ? new Typed(count) : new Array(count)
      for (let i = 0; i < count; i++) data[i] = dtype.read(view, base + begin + i * dtype.bytes)
    }
    tensors[name] = { dtype: info.dtype, shape: info.shape, data }
  }
  return tensors
}
