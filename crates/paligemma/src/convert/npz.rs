//! A `.npz` reader that never loads more than the caller asks for: headers are parsed up front,
//! data is read per array, per leading-axis slice, or streamed. STORED entries (what `np.savez`
//! writes) are read by seeking; DEFLATED ones (`np.savez_compressed`) by decompressing forward.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::npy::{read_header, NpyDtype, NpyHeader};
use crate::error::{Error, Result};

/// One array of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayInfo {
    /// The entry name without its `.npy` suffix, exactly as stored (e.g. `params/llm/final_norm/scale`).
    pub name: String,
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
}

impl ArrayInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of array data (validated against the entry size when the archive was opened).
    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
}

struct Entry {
    info: ArrayInfo,
    zip_index: usize,
    data_offset: u64,
    stored: bool,
}

/// An opened `.npz` archive.
pub struct NpzArchive<R> {
    zip: ZipArchive<R>,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl NpzArchive<BufReader<File>> {
    /// Opens a `.npz` file and parses every array header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
        Self::from_reader(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| Error::Convert(format!("{}: {}", path.display(), strip_prefix(&e))))
    }
}

impl<'a> NpzArchive<Cursor<&'a [u8]>> {
    /// Reads an archive held in memory (e.g. fuzz input).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_reader(Cursor::new(bytes))
    }
}

fn strip_prefix(e: &Error) -> String {
    match e {
        Error::Convert(m) => m.clone(),
        other => other.to_string(),
    }
}

fn zip_error(what: &str, e: zip::result::ZipError) -> Error {
    Error::Convert(format!("{what}: {e}"))
}

impl<R: Read + Seek> NpzArchive<R> {
    /// Reads the zip directory and the header of every `.npy` entry; other entries are ignored.
    pub fn from_reader(mut reader: R) -> Result<Self> {
        let total = reader
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::Convert(format!("cannot read the archive: {e}")))?;
        let mut zip = ZipArchive::new(reader).map_err(|e| zip_error("not a readable .npz (zip) archive", e))?;
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for zip_index in 0..zip.len() {
            let mut file = zip.by_index(zip_index).map_err(|e| zip_error("cannot open an archive entry", e))?;
            let Some(name) = file.name().strip_suffix(".npy").map(str::to_string) else { continue };
            if file.is_dir() {
                continue;
            }
            let stored = match file.compression() {
                CompressionMethod::Stored => true,
                CompressionMethod::Deflated => false,
                other => {
                    return Err(Error::Convert(format!("array `{name}`: compression {other} is not supported")))
                }
            };
            let entry_size = file.size();
            check_plausible(&name, stored, entry_size, file.compressed_size(), file.data_start(), total)?;
            let header = read_header(&mut file, &name)?;
            check_size(&name, &header, entry_size)?;
            let info = ArrayInfo { name: name.clone(), dtype: header.dtype, shape: header.shape };
            if by_name.insert(name.clone(), entries.len()).is_some() {
                return Err(Error::Convert(format!("array `{name}` appears twice in the archive")));
            }
            entries.push(Entry { info, zip_index, data_offset: header.data_offset, stored });
        }
        Ok(NpzArchive { zip, entries, by_name })
    }

    /// Every array, in archive order.
    pub fn arrays(&self) -> impl Iterator<Item = &ArrayInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// The array called `name` (without `.npy`).
    pub fn get(&self, name: &str) -> Option<&ArrayInfo> {
        self.by_name.get(name).map(|&i| &self.entries[i].info)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.by_name
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::Convert(format!("array `{name}` is not in the archive")))
    }

    /// The whole array as little-endian bytes in its stored dtype.
    pub fn read_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let len = self.entry(name)?.info.nbytes();
        self.read_range(name, 0, len)
    }

    /// The whole array widened to f32.
    pub fn read_f32(&mut self, name: &str) -> Result<Vec<f32>> {
        let dtype = self.entry(name)?.info.dtype;
        let bytes = self.read_bytes(name)?;
        let mut out = Vec::with_capacity(bytes.len() / dtype.size());
        dtype.decode_into(&bytes, &mut out);
        Ok(out)
    }

    /// The sub-array `array[index[0], index[1], …]` (indices into the leading axes) as bytes.
    pub fn read_slice(&mut self, name: &str, index: &[usize]) -> Result<Vec<u8>> {
        let info = &self.entry(name)?.info;
        if index.len() > info.shape.len() || index.iter().zip(&info.shape).any(|(i, d)| i >= d) {
            return Err(Error::Convert(format!(
                "array `{name}`: index {index:?} is out of bounds for shape {:?}",
                info.shape
            )));
        }
        let inner: usize = info.shape[index.len()..].iter().product();
        let flat = index.iter().zip(&info.shape).fold(0usize, |acc, (i, d)| acc * d + i);
        let esize = info.dtype.size() as u64;
        self.read_range(name, flat as u64 * inner as u64 * esize, inner as u64 * esize)
    }

    /// `len` bytes of array data starting `start` bytes into it.
    fn read_range(&mut self, name: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let entry = self.entry(name)?;
        let (zip_index, offset, stored) = (entry.zip_index, entry.data_offset + start, entry.stored);
        let fail = |e: std::io::Error| Error::Convert(format!("array `{name}`: cannot read its data: {e}"));
        if stored {
            let mut file = self.zip.by_index_seek(zip_index).map_err(|e| zip_error(name, e))?;
            file.seek(std::io::SeekFrom::Start(offset)).map_err(fail)?;
            read_exactly(&mut file, len).map_err(fail)
        } else {
            let mut file = self.zip.by_index(zip_index).map_err(|e| zip_error(name, e))?;
            std::io::copy(&mut (&mut file).take(offset), &mut std::io::sink()).map_err(fail)?;
            read_exactly(&mut file, len).map_err(fail)
        }
    }

    /// Calls `f` with a reader positioned at the first data byte of `name`, for sequential
    /// passes over arrays too large to hold (stacked layers, the embedding).
    pub fn stream<T>(&mut self, name: &str, f: impl FnOnce(&mut dyn Read) -> Result<T>) -> Result<T> {
        let entry = self.entry(name)?;
        let (zip_index, offset) = (entry.zip_index, entry.data_offset);
        let mut file = self.zip.by_index(zip_index).map_err(|e| zip_error(name, e))?;
        let skipped = std::io::copy(&mut (&mut file).take(offset), &mut std::io::sink())
            .map_err(|e| Error::Convert(format!("array `{name}`: cannot read its data: {e}")))?;
        if skipped != offset {
            return Err(Error::Convert(format!("array `{name}`: the entry ends inside its header")));
        }
        f(&mut file)
    }
}

/// Rejects entries whose declared size cannot be backed by the archive's bytes, so that a
/// corrupt directory cannot make us allocate gigabytes (deflate expands at most ~1032×).
fn check_plausible(name: &str, stored: bool, size: u64, compressed: u64, start: u64, total: u64) -> Result<()> {
    let in_file = start.checked_add(compressed).is_some_and(|end| end <= total);
    let ratio_ok = if stored { size == compressed } else { size <= compressed.saturating_mul(1032).saturating_add(1024) };
    if !(in_file && ratio_ok) {
        return Err(Error::Convert(format!(
            "array `{name}`: the archive is truncated or corrupt (entry of {size} bytes, {compressed} stored at offset {start}, archive of {total} bytes)"
        )));
    }
    Ok(())
}

/// The entry must hold exactly the header plus the data the shape implies; anything else is a
/// truncated or corrupt file, caught here before any large allocation.
fn check_size(name: &str, header: &NpyHeader, entry_size: u64) -> Result<()> {
    let expected = header.data_bytes().and_then(|n| n.checked_add(header.data_offset));
    if expected != Some(entry_size) {
        return Err(Error::Convert(format!(
            "array `{name}`: the entry holds {entry_size} bytes but a {:?} array of shape {:?} needs {}",
            header.dtype,
            header.shape,
            expected.map_or("more than 2^64".to_string(), |n| n.to_string())
        )));
    }
    Ok(())
}

/// Reads exactly `len` bytes (sizes were checked against the archive when it was opened).
pub(crate) fn read_exactly(r: &mut impl Read, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let capacity = usize::try_from(len).map_err(std::io::Error::other)?;
    buf.try_reserve_exact(capacity).map_err(std::io::Error::other)?;
    let got = r.take(len).read_to_end(&mut buf)?;
    if (got as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("only {got} of {len} bytes are present (truncated file?)"),
        ));
    }
    Ok(buf)
}
