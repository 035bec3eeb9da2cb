//! Safetensors checkpoints: memory-mapped files (single or sharded), tensor-name normalisation
//! across transformers versions (spec §5.2), shape checks and dtype conversion on load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::cpu::huge_pages;
use crate::error::{Error, Result};

/// One memory-mapped `.safetensors` file with its parsed header.
struct MappedFile {
    path: PathBuf,
    /// Shared with the tensors of a prepared folder used in place ([`MappedF32`]).
    mmap: Arc<Mmap>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// Where one canonical tensor lives.
struct Location {
    file: usize,
    raw_name: String,
}

/// What a load is doing with the tensor it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPhase {
    /// A prepared folder's tensors, used in place from the mapped file.
    Mapping,
    /// Checkpoint tensors copied into fresh memory, converted to the compute dtype and laid out
    /// for the kernels (panel-major on the CPU).
    Converting,
    /// Matrices being quantized (`q8_0`, `q4k`); reported before each, with the bytes unchanged.
    Quantizing,
    /// A prepared folder's quantized matrices repacked for the kernels (GGML blocks into
    /// candle's tiles or into int8 panels).
    Repacking,
}

impl LoadPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadPhase::Mapping => "mapping",
            LoadPhase::Converting => "converting",
            LoadPhase::Quantizing => "quantizing",
            LoadPhase::Repacking => "repacking",
        }
    }
}

/// Reports progress and checks for cancellation while tensors are materialised.
pub struct LoadMonitor<'a> {
    /// Called with (loaded bytes, total bytes, phase) after each tensor, and with the phase
    /// when one starts that reads no new bytes (quantizing).
    pub on_progress: Option<&'a (dyn Fn(u64, u64, LoadPhase) + Sync)>,
    /// Returns true when the caller has given up; loading stops with [`Error::Aborted`].
    pub is_cancelled: Option<&'a (dyn Fn() -> bool + Sync)>,
}

/// The stored bytes of one tensor (little-endian, shape already checked) and their dtype.
pub struct RawTensor<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
}

/// All tensors of a checkpoint folder, addressed by canonical name.
pub struct Weights {
    files: Vec<MappedFile>,
    index: HashMap<String, Location>,
    total_bytes: u64,
    loaded_bytes: AtomicU64,
    /// What a load produced, tensor by tensor, when it is being recorded for a prepared
    /// folder ([`crate::prepared`]).
    recording: Option<Mutex<Vec<(String, Recorded)>>>,
}

/// Maps any known tensor name to the canonical one, or `None` for tensors we ignore.
///
/// Canonical names drop the wrappers that moved between transformers versions:
/// `vision_tower.…` (no `vision_model`), `multi_modal_projector.…`, `language_model.…` (no inner
/// `model`). `lm_head` is ignored because PaliGemma always ties it to `embed_tokens`.
pub fn canonical_name(raw: &str) -> Option<String> {
    let mut name = raw;
    if let Some(rest) = name.strip_prefix("model.") {
        if ["language_model.", "vision_tower.", "multi_modal_projector."].iter().any(|p| rest.starts_with(p)) {
            name = rest;
        }
    }
    if name.starts_with("lm_head.") || name.starts_with("language_model.lm_head.") {
        return None;
    }
    let name = if let Some(rest) = name.strip_prefix("language_model.model.") {
        format!("language_model.{rest}")
    } else if let Some(rest) = name.strip_prefix("vision_tower.vision_model.") {
        format!("vision_tower.{rest}")
    } else {
        name.to_string()
    };
    Some(name)
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self.files.iter().map(|file| file.path.display().to_string()).collect();
        f.debug_struct("Weights").field("files", &paths).field("tensors", &self.index.len()).finish()
    }
}

impl Weights {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths = if index_path.exists() {
            shard_paths(&index_path, dir)?
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Weights(format!(
                "no weights in {}: expected model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        Self::open_files(&paths)
    }

    /// Opens an explicit list of safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        let mut total_bytes = 0u64;
        for path in paths {
            let file = map_file(path)?;
            for (raw, info) in &file.tensors {
                total_bytes += (info.data_offsets.1 - info.data_offsets.0) as u64;
                let Some(canonical) = canonical_name(raw) else { continue };
                let location = Location { file: files.len(), raw_name: raw.clone() };
                if let Some(previous) = index.insert(canonical.clone(), location) {
                    let other = &files.get(previous.file).map(|f: &MappedFile| f.path.clone()).unwrap_or_else(|| path.clone());
                    return Err(Error::Weights(format!(
                        "tensor `{canonical}` appears twice (as `{}` in {} and as `{raw}` in {})",
                        previous.raw_name,
                        other.display(),
                        path.display()
                    )));
                }
            }
            files.push(file);
        }
        Ok(Weights { files, index, total_bytes, loaded_bytes: AtomicU64::new(0), recording: None })
    }

    /// Bytes of tensor data across all files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether a canonical tensor name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Canonical names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Loads a tensor, checks its shape and converts it to `dtype` on `device`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device, monitor: &LoadMonitor) -> Result<Tensor> {
        let tensor = self.convert(name, shape, dtype, device, monitor)?;
        self.record(name, || Recorded::Tensor(tensor.clone()));
        Ok(tensor)
    }

    fn convert(&self, name: &str, shape: &[usize], dtype: DType, device: &Device, monitor: &LoadMonitor) -> Result<Tensor> {
        self.with_raw(name, shape, monitor, |raw| {
            if device.is_cpu() {
                // Straight into a huge-page buffer where the conversion is covered (decode speed).
                if let Some(t) = huge_pages::tensor_from_le_bytes(raw.bytes, raw.dtype, dtype, shape)? {
                    return Ok(t);
                }
                return Ok(Tensor::from_raw_buffer(raw.bytes, raw.dtype, shape, &Device::Cpu)?.to_dtype(dtype)?);
            }
            if let Some(t) = upload(&raw, shape, device)? {
                return Ok(t.to_dtype(dtype)?);
            }
            Ok(Tensor::from_raw_buffer(raw.bytes, raw.dtype, shape, &Device::Cpu)?.to_device(device)?.to_dtype(dtype)?)
        })
    }

    /// Hands the checked, still-mapped bytes of a tensor to `convert` (loaders that convert while
    /// copying, such as the transposed CPU layout), then releases the mapped pages and reports
    /// progress.
    pub fn with_raw<R>(&self, name: &str, shape: &[usize], monitor: &LoadMonitor, convert: impl FnOnce(RawTensor<'_>) -> Result<R>) -> Result<R> {
        check_cancelled(monitor)?;
        let loc = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), expected: shape.to_vec() })?;
        let file = &self.files[loc.file];
        let info = &file.tensors[&loc.raw_name];
        if info.shape != shape {
            return Err(Error::TensorShape { name: name.to_string(), expected: shape.to_vec(), found: info.shape.clone() });
        }
        let file_dtype = match info.dtype {
            StDtype::F32 => DType::F32,
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            other => {
                return Err(Error::Weights(format!(
                    "tensor `{name}` in {} has dtype {other:?}; only F32, BF16 and F16 are supported",
                    file.path.display()
                )))
            }
        };
        let (begin, end) = (file.data_start + info.data_offsets.0, file.data_start + info.data_offsets.1);
        let converted = convert(RawTensor { bytes: &file.mmap[begin..end], dtype: file_dtype })?;
        // The copy now lives on the heap (or the device); let the kernel drop the mapped pages
        // so RSS does not hold the checkpoint twice.
        release_pages(&file.mmap, begin, end - begin);
        self.report_loaded(end - begin, monitor, LoadPhase::Converting);
        Ok(converted)
    }

    /// Counts `bytes` of tensor data as loaded and reports the progress (never past the total:
    /// a tensor may be read twice).
    fn report_loaded(&self, bytes: usize, monitor: &LoadMonitor, phase: LoadPhase) {
        let loaded = self.loaded_bytes.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        if let Some(progress) = monitor.on_progress {
            progress(loaded.min(self.total_bytes), self.total_bytes, phase);
        }
    }

    /// Reports that `phase` starts, with the bytes loaded so far.
    pub fn report_phase(&self, monitor: &LoadMonitor, phase: LoadPhase) {
        self.report_loaded(0, monitor, phase);
    }

    /// Reads a tensor as stored, without shape expectations (for inspection and conversion).
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        let loc = self.index.get(name)?;
        Some(&self.files[loc.file].tensors[&loc.raw_name].shape)
    }
}

/// A tensor on `device` copied straight from the mapped bytes. The way through a host tensor
/// first copies the checkpoint into fresh memory, a page fault per 4 KiB (1.8–2.6 GB/s on the
/// bench VMs), before the upload copies it again. `None` where the bytes are not aligned for
/// their type (safetensors does not promise alignment), or on a big-endian host.
fn upload(raw: &RawTensor, shape: &[usize], device: &Device) -> Result<Option<Tensor>> {
    fn typed<T: bytemuck::Pod + candle_core::WithDType>(bytes: &[u8], shape: &[usize], device: &Device) -> Result<Option<Tensor>> {
        match bytemuck::try_cast_slice::<u8, T>(bytes) {
            Ok(values) => Ok(Some(Tensor::from_slice(values, shape, device)?)),
            Err(_) => Ok(None),
        }
    }
    if cfg!(target_endian = "big") {
        return Ok(None);
    }
    match raw.dtype {
        DType::F32 => typed::<f32>(raw.bytes, shape, device),
        DType::BF16 => typed::<half::bf16>(raw.bytes, shape, device),
        DType::F16 => typed::<half::f16>(raw.bytes, shape, device),
        _ => Ok(None),
    }
}

/// [`Error::Aborted`] once the caller of a load has given up.
fn check_cancelled(monitor: &LoadMonitor) -> Result<()> {
    match monitor.is_cancelled.is_some_and(|c| c()) {
        true => Err(Error::Aborted),
        false => Ok(()),
    }
}

fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the mapping is private and read-only; MADV_DONTNEED only discards resident
        // pages, which the kernel reloads from the file if they are read again.
        let page = 4096;
        let start = offset.div_ceil(page) * page;
        let stop = (offset + len) / page * page;
        if stop > start {
            let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, stop - start) };
        }
    }
    #[cfg(not(unix))]
    let _ = (mmap, offset, len);
}

fn shard_paths(index_path: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::files::read_text_capped(index_path, crate::files::MAX_INDEX_BYTES)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Weights(format!("{} is not valid JSON: {e}", index_path.display())))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        Error::Weights(format!("{} has no `weight_map` object", index_path.display()))
    })?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::Weights(format!("{}: weight_map[`{tensor}`] is not a file name", index_path.display()))
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::Weights(format!(
                "{}: shard name `{file}` must be a plain file name in the model folder",
                index_path.display()
            )));
        }
        if !names.contains(&file) {
            names.push(file);
        }
    }
    if names.is_empty() {
        return Err(Error::Weights(format!("{}: weight_map is empty", index_path.display())));
    }
    names.sort_unstable();
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    for p in &paths {
        if !p.is_file() {
            return Err(Error::Weights(format!(
                "{} names shard {}, which does not exist",
                index_path.display(),
                p.display()
            )));
        }
    }
    Ok(paths)
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::Weights(format!(
            "{} is not a safetensors file: {len} bytes is shorter than the 8-byte header length",
            path.display()
        )));
    }
    // SAFETY: the file is opened read-only; like every mmap-based loader we rely on the user not
    // truncating the checkpoint while it is being loaded.
    let mmap = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap[..])
        .map_err(|e| Error::Weights(format!("{} is not a valid safetensors file: {e}", path.display())))?;
    let data_start = 8 + header_len;
    let data_len = mmap.len() - data_start;
    let mut tensors = HashMap::new();
    for (name, info) in metadata.tensors() {
        if info.data_offsets.1 > data_len || info.data_offsets.0 > info.data_offsets.1 {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` points at bytes {}..{} beyond the {data_len} bytes of data",
                path.display(),
                info.data_offsets.0,
                info.data_offsets.1
            )));
        }
        // safetensors only checks the element count, which a zero dimension keeps at 0 however
        // large the others are; candle's contiguous strides multiply the other dimensions and
        // would overflow (a panic with overflow checks on). No real tensor comes near this.
        if info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1))).is_none() {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` has shape {:?}, whose dimensions multiply past the address space",
                path.display(),
                info.shape
            )));
        }
        tensors.insert(name, info.clone());
    }
    Ok(MappedFile { path: path.to_path_buf(), mmap, data_start, tensors })
}

#[cfg(test)]
mod tests;

mod mapped;
mod scope;

pub use mapped::{MappedBytes, MappedF32, Recorded};
pub use scope::{Scope, WeightPath};
