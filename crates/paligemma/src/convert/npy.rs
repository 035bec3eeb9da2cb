//! The `.npy` header: magic, version, and the Python-literal dict that describes the array.
//!
//! Only what PaliGemma checkpoints use is accepted: little-endian `f4`/`f2`, and the 2-byte void
//! type (`|V2`) that numpy writes for `ml_dtypes.bfloat16`, in C order. Everything else is a
//! clear error, never a guess.

use std::io::Read;

use crate::error::{Error, Result};

/// Element type of a stored array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F16,
    /// Stored by numpy as the void type `V2` (numpy has no native bfloat16).
    BF16,
}

impl NpyDtype {
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F16 | NpyDtype::BF16 => 2,
        }
    }

    fn from_descr(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(NpyDtype::F32),
            "<f2" => Some(NpyDtype::F16),
            "|V2" | "<V2" | "V2" => Some(NpyDtype::BF16),
            _ => None,
        }
    }

    /// Widens little-endian elements to f32 (exact for every supported type).
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            NpyDtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            NpyDtype::F16 => {
                out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
            NpyDtype::BF16 => {
                out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    /// Bytes before the data (magic + version + length field + dict).
    pub data_offset: u64,
}

impl NpyHeader {
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    pub fn data_bytes(&self) -> Option<u64> {
        self.numel()?.checked_mul(self.dtype.size()).map(|n| n as u64)
    }
}

/// numpy itself refuses headers over 10 000 bytes by default; allow more, but bounded.
const MAX_HEADER: usize = 1 << 20;

/// Reads and parses the header at the start of `r`; `what` names the array in errors.
pub fn read_header(r: &mut impl Read, what: &str) -> Result<NpyHeader> {
    let bad = |msg: String| Error::Convert(format!("array `{what}`: {msg}"));
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix).map_err(|e| bad(format!("cannot read the .npy header: {e}")))?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array (bad magic bytes)".into()));
    }
    let (len, len_field) = match prefix[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| bad(format!("truncated .npy header: {e}")))?;
            (u16::from_le_bytes(b) as usize, 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| bad(format!("truncated .npy header: {e}")))?;
            (u32::from_le_bytes(b) as usize, 4)
        }
        v => return Err(bad(format!(".npy format version {v}.{} is not supported", prefix[7]))),
    };
    if len > MAX_HEADER {
        return Err(bad(format!(".npy header of {len} bytes exceeds the {MAX_HEADER}-byte limit")));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|e| bad(format!("truncated .npy header: {e}")))?;
    // v1/v2 headers are latin-1, v3 UTF-8; every valid dict we accept is ASCII either way.
    let text = String::from_utf8(text).map_err(|_| bad("the .npy header is not ASCII/UTF-8 text".into()))?;
    let dict = parse_dict(&text).map_err(|m| bad(format!("malformed .npy header {text:?}: {m}")))?;
    let dtype = NpyDtype::from_descr(&dict.descr).ok_or_else(|| {
        bad(format!(
            "dtype `{}` is not supported; expected little-endian float32 (<f4), float16 (<f2) or bfloat16 (|V2)",
            dict.descr
        ))
    })?;
    if dict.fortran_order {
        return Err(bad("is stored in Fortran order; only C-order arrays are supported".into()));
    }
    let header = NpyHeader { dtype, shape: dict.shape, data_offset: (8 + len_field + len) as u64 };
    if header.data_bytes().is_none() {
        return Err(bad(format!("shape {:?} overflows the address space", header.shape)));
    }
    Ok(header)
}

/// Serialises a v1 header for a C-order array (used by tests and tools that write `.npz`).
pub fn write_header(dtype: NpyDtype, shape: &[usize]) -> Vec<u8> {
    let descr = match dtype {
        NpyDtype::F32 => "<f4",
        NpyDtype::F16 => "<f2",
        NpyDtype::BF16 => "|V2",
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // numpy pads with spaces and ends with '\n' so the data starts on a 64-byte boundary.
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - total % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

struct Dict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, the only form numpy
/// writes (keys in any order; trailing commas allowed).
fn parse_dict(text: &str) -> std::result::Result<Dict, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => {
                p.skip_ws();
                if p.peek() == Some(b'[') {
                    return Err("structured dtypes are not supported".into());
                }
                descr = Some(p.string()?)
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key `{other}`")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    Ok(Dict {
        descr: descr.ok_or("missing `descr`")?,
        fortran_order: fortran.ok_or("missing `fortran_order`")?,
        shape: shape.ok_or("missing `shape`")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        let quote = self.peek().filter(|&q| q == b'\'' || q == b'"').ok_or(format!("expected a string at byte {}", self.i))?;
        self.i += 1;
        let start = self.i;
        while self.peek().is_some_and(|c| c != quote) {
            self.i += 1;
        }
        let s = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "invalid text in a string".to_string())?;
        self.expect(quote)?;
        Ok(s.to_string())
    }
    fn word(&mut self) -> &[u8] {
        self.skip_ws();
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        match self.word() {
            b"True" => Ok(true),
            b"False" => Ok(false),
            _ => Err(format!("expected True or False at byte {}", self.i)),
        }
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            // Python 2 era files may write long integers as `3L`.
            let word = self.word();
            let digits = word.strip_suffix(b"L").unwrap_or(word);
            let dim = std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok())
                .ok_or(format!("expected a dimension at byte {}", self.i))?;
            dims.push(dim);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}
