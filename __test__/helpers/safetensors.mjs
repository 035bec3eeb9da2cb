// Minimal safetensors reader for test fixtures: an 8-byte little-endian header length, a JSON
// header, then raw little-endian tensor data.
import { readFileSync } from 'node:fs'

const DTYPES = {
  F32: { bytes: 4, read: (view, offset) => view.getFloat32(offset, true) },
  F64: { bytes: 8, read: (view, offset) => view.getFloat64(offset, true) },
  I64: { bytes: 8, read: (view, offset) => Number(view.getBigInt64(offset, true)) },
  I32: { bytes: 4, read: (view, offset) => view.getInt32(offset, true) },
}

/** Reads every tensor of a .safetensors file as `{ dtype, shape, data }` (F32 → Float32Array, ints → number[]). */
export function readSafetensors(path) {
  const buf = readFileSync(path)
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
    const data = info.dtype === 'F32' ? new Float32Array(count) : new Array(count)
    for (let i = 0; i < count; i++) data[i] = dtype.read(view, base + begin + i * dtype.bytes)
    tensors[name] = { dtype: info.dtype, shape: info.shape, data }
  }
  return tensors
}
