//! Tensors used in place from the mapped file, and the record of a load that
//! [`crate::prepared`] writes out as a prepared folder.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use memmap2::Mmap;
use safetensors::tensor::Dtype as StDtype;

use super::{LoadMonitor, Weights};
use crate::error::{Error, Result};

/// f32 values read straight from a mapped file: a prepared folder's panel-major matrices, used
/// in place for the model's lifetime instead of being copied into fresh memory (which fills
/// pages at 1.4–2.6 GB/s on the bench VMs; benches/RESULTS.md, profile item 13).
///
/// Like every memory-mapped loader (llama.cpp, safetensors in Python), this relies on the file
/// not being truncated or rewritten while the model is loaded: the process would fault on the
/// missing pages. docs/guarantees.md says so.
#[derive(Clone)]
pub struct MappedF32 {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
}

impl MappedF32 {
    pub fn as_slice(&self) -> &[f32] {
        // Checked in `Weights::mapped_f32`: the range lies inside the mapping, starts 4-byte
        // aligned (the mapping is page-aligned) and the host is little-endian.
        bytemuck::cast_slice(&self.map[self.offset..self.offset + self.len * 4])
    }
}

/// Bytes read straight from a mapped file: a prepared folder's int8 panels
/// ([`crate::cpu::int8_panels`]), used in place like [`MappedF32`].
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
}

impl MappedBytes {
    pub fn as_slice(&self) -> &[u8] {
        // Checked in `Weights::mapped_u8`: the range lies inside the mapping.
        &self.map[self.offset..self.offset + self.len]
    }
}

impl std::fmt::Debug for MappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedBytes").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

impl std::fmt::Debug for MappedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedF32").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

/// One tensor as a load produced it.
#[derive(Clone)]
pub enum Recorded {
    /// As [`Weights::get`] returned it (norms, biases, embeddings of the vision tower…).
    Tensor(Tensor),
    /// A panel-major matrix ([`crate::cpu::panels`]) of `len` f32 values.
    Panels(crate::cpu::panels::PanelBuffer),
    /// A quantized matrix's blocks, as GGML lays them out.
    Blocks(Arc<Vec<u8>>),
    /// A `q8_0` matrix in int8 panels ([`crate::cpu::int8_panels`]).
    Int8Panels(Arc<crate::cpu::int8_panels::Int8Panels>),
    /// A tensor recorded earlier that the model no longer uses (a dense matrix it quantized).
    Dropped,
}

impl Weights {
    /// Whether this load is being recorded.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Passes the stored bytes of the 1-D U8 tensor `name` (a prepared folder's quantized
    /// blocks) to `f`, then releases the mapped pages; `None` when there is no such tensor.
    pub fn with_stored_bytes<R>(&self, name: &str, monitor: &LoadMonitor, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<Option<R>> {
        super::check_cancelled(monitor)?;
        let Some(loc) = self.index.get(name) else { return Ok(None) };
        let file = &self.files[loc.file];
        let info = &file.tensors[&loc.raw_name];
        if info.dtype != StDtype::U8 || info.shape.len() != 1 {
            return Err(Error::Weights(format!("{}: tensor `{name}` is {:?} {:?}; a prepared folder holds U8 blocks", file.path.display(), info.dtype, info.shape)));
        }
        let (begin, end) = (file.data_start + info.data_offsets.0, file.data_start + info.data_offsets.1);
        let out = f(&file.mmap[begin..end]).map_err(|e| match e {
            Error::Weights(m) => Error::Weights(format!("{}: tensor `{name}`: {m}", file.path.display())),
            other => other,
        })?;
        super::release_pages(&file.mmap, begin, end - begin);
        self.report_loaded(end - begin, monitor, super::LoadPhase::Repacking);
        Ok(Some(out))
    }

    /// Records every tensor the next load produces ([`Weights::recorded`]).
    pub fn start_recording(&mut self) {
        self.recording = Some(Mutex::new(Vec::new()));
    }

    /// What the load produced, in order; empty unless [`Weights::start_recording`] was called.
    pub fn recorded(&self) -> Vec<(String, Recorded)> {
        self.recording.as_ref().map(|r| r.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default()
    }

    /// Adds a tensor to the record, when recording.
    pub fn record(&self, name: &str, tensor: impl FnOnce() -> Recorded) {
        if let Some(recording) = &self.recording {
            if let Ok(mut v) = recording.lock() {
                v.push((name.to_string(), tensor()));
            }
        }
    }

    /// The f32 tensor `name` of exactly `shape`, mapped in place; `None` when the checkpoint
    /// has no such tensor. A tensor of another dtype, shape or alignment is an error that names
    /// the file.
    pub fn mapped_f32(&self, name: &str, shape: &[usize], monitor: &LoadMonitor) -> Result<Option<MappedF32>> {
        let Some((map, offset)) = self.mapped(name, StDtype::F32, shape, monitor)? else { return Ok(None) };
        Ok(Some(MappedF32 { map, offset, len: shape.iter().product() }))
    }

    /// The 1-D U8 tensor `name` of exactly `len` bytes, mapped in place; `None` when the
    /// checkpoint has no such tensor, an error naming the file when it has another one.
    pub fn mapped_u8(&self, name: &str, len: usize, monitor: &LoadMonitor) -> Result<Option<MappedBytes>> {
        let Some((map, offset)) = self.mapped(name, StDtype::U8, &[len], monitor)? else { return Ok(None) };
        Ok(Some(MappedBytes { map, offset, len }))
    }

    /// The mapping and byte offset of tensor `name`, checked to be `dtype` of exactly `shape`
    /// and aligned for it, with its pages populated and counted as loaded.
    fn mapped(&self, name: &str, dtype: StDtype, shape: &[usize], monitor: &LoadMonitor) -> Result<Option<(Arc<Mmap>, usize)>> {
        super::check_cancelled(monitor)?;
        let Some(loc) = self.index.get(name) else { return Ok(None) };
        let file = &self.files[loc.file];
        let info = &file.tensors[&loc.raw_name];
        if info.dtype != dtype || info.shape != shape {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` is {:?} {:?}; a prepared folder for this config holds {dtype:?} {shape:?}",
                file.path.display(),
                info.dtype,
                info.shape
            )));
        }
        // Both dtypes read here (F32, U8) are whole bytes.
        let width = dtype.bitsize() / 8;
        let bytes = shape.iter().product::<usize>() * width;
        let offset = file.data_start + info.data_offsets.0;
        if !offset.is_multiple_of(width) || cfg!(target_endian = "big") {
            return Err(Error::Weights(format!("{}: tensor `{name}` is not {width}-byte aligned in the file; prepare the folder again", file.path.display())));
        }
        populate(&file.mmap, offset, bytes);
        self.report_loaded(bytes, monitor, super::LoadPhase::Mapping);
        Ok(Some((file.mmap.clone(), offset)))
    }
}

impl Weights {
    /// Each file's path, safetensors header bytes and length (the prepared folder's
    /// fingerprint of its source).
    pub(crate) fn headers(&self) -> Vec<(&std::path::Path, &[u8], u64)> {
        self.files.iter().map(|f| (f.path.as_path(), &f.mmap[8..f.data_start], f.mmap.len() as u64)).collect()
    }
}

/// Maps the pages of `[offset, offset + len)` now (reading them from the file where the page
/// cache lacks them), so that the first request does not fault them in one at a time: on the
/// bench VM that made PaliGemma-3B's first prefill 11 s instead of 7. Best effort: an older
/// kernel without `MADV_POPULATE_READ` leaves them to fault in on first use.
fn populate(map: &Mmap, offset: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let page = 4096;
        let start = offset / page * page;
        let _ = map.advise_range(memmap2::Advice::PopulateRead, start, offset + len - start);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (map, offset, len);
}
