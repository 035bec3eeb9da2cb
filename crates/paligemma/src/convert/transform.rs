//! Element conversion and axis permutation, one layer slice at a time.

use std::io::Read;
use std::str::FromStr;

use super::npy::NpyDtype;
use crate::error::{Error, Result};

/// dtype of the written safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    F32,
    BF16,
    F16,
}

impl OutputDtype {
    pub fn size(self) -> usize {
        match self {
            OutputDtype::F32 => 4,
            OutputDtype::BF16 | OutputDtype::F16 => 2,
        }
    }

    /// The safetensors header spelling.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            OutputDtype::F32 => "F32",
            OutputDtype::BF16 => "BF16",
            OutputDtype::F16 => "F16",
        }
    }

    /// The `torch_dtype` spelling used in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::F32 => "float32",
            OutputDtype::BF16 => "bfloat16",
            OutputDtype::F16 => "float16",
        }
    }

    /// Keeps the source precision: no silent widening or narrowing.
    pub fn from_source(dtype: NpyDtype) -> Self {
        match dtype {
            NpyDtype::F32 => OutputDtype::F32,
            NpyDtype::BF16 => OutputDtype::BF16,
            NpyDtype::F16 => OutputDtype::F16,
        }
    }

    /// Appends `values` as little-endian elements (f32 → bf16/f16 rounds to nearest even).
    pub(crate) fn encode_into(self, values: impl Iterator<Item = f32>, out: &mut Vec<u8>) {
        match self {
            OutputDtype::F32 => values.for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            OutputDtype::BF16 => values.for_each(|v| out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())),
            OutputDtype::F16 => values.for_each(|v| out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes())),
        }
    }
}

impl FromStr for OutputDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(OutputDtype::F32),
            "bf16" | "bfloat16" => Ok(OutputDtype::BF16),
            "f16" | "float16" => Ok(OutputDtype::F16),
            _ => Err(Error::invalid("dtype", format!("`{s}` is not one of f32, bf16, f16"))),
        }
    }
}

/// Reads `numel` elements of `dtype` from `r` and widens them to f32, in bounded chunks so the
/// raw bytes and the widened copy never coexist in full.
pub(crate) fn read_f32(r: &mut dyn Read, dtype: NpyDtype, numel: usize, what: &str) -> Result<Vec<f32>> {
    const CHUNK: usize = 8 << 20;
    let mut out = Vec::new();
    out.try_reserve_exact(numel)
        .map_err(|e| Error::Convert(format!("`{what}`: cannot allocate {numel} elements: {e}")))?;
    let mut buf = vec![0u8; CHUNK.min(numel * dtype.size())];
    let mut left = numel * dtype.size();
    while left > 0 {
        let n = left.min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(|e| {
            Error::Convert(format!("`{what}`: cannot read its data (truncated file?): {e}"))
        })?;
        dtype.decode_into(&buf[..n], &mut out);
        left -= n;
    }
    Ok(out)
}

/// Permutes the axes of a row-major array (`out[i_0..] = src[i_perm^-1..]`, numpy's
/// `transpose(perm)`) and encodes the result. Reshapes are free in row-major order, so every
/// transform in the mapping table is one call.
pub(crate) fn permute_encode(src: &[f32], dims: &[usize], perm: &[usize], dtype: OutputDtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * dtype.size());
    if perm.iter().enumerate().all(|(k, &p)| k == p) || src.is_empty() {
        dtype.encode_into(src.iter().copied(), &mut out);
        return out;
    }
    let rank = dims.len();
    let mut src_strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        src_strides[k] = src_strides[k + 1] * dims[k + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| src_strides[p]).collect();
    let (inner, inner_stride) = (out_dims[rank - 1], strides[rank - 1]);
    let outer = src.len() / inner;
    let mut index = vec![0usize; rank - 1];
    let mut base = 0usize;
    for _ in 0..outer {
        dtype.encode_into((0..inner).map(|j| src[base + j * inner_stride]), &mut out);
        // Odometer over the outer output axes, keeping `base` in step.
        for k in (0..rank - 1).rev() {
            index[k] += 1;
            base += strides[k];
            if index[k] < out_dims[k] {
                break;
            }
            base -= strides[k] * out_dims[k];
            index[k] = 0;
        }
    }
    out
}
