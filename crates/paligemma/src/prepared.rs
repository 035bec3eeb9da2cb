//! Prepared folders: a model folder whose weights are already in the layout the CPU kernels
//! read, written once by `paligemma quantize` and then loaded without converting anything.
//!
//! Why: loading a Hugging Face folder on the CPU copies every weight into fresh memory and
//! repacks it (panel-major, [`crate::cpu::panels`]); on the bench VMs that costs 20–45 s for
//! PaliGemma-3B in f32, mostly the kernel filling fresh pages (benches/RESULTS.md, profile item
//! 13), where transformers maps the file and copies nothing. A prepared f32 folder holds the
//! panel-major matrices themselves, and the loader uses them in place from the mapped file.
//!
//! **Format** (version 2; docs/prepared.md has every detail): a safetensors file, so any
//! safetensors reader can list and read it.
//! - `model.safetensors`: every tensor the CPU f32 load produces, under its canonical name
//!   (`language_model.layers.0.input_layernorm.weight`, …) in f32, plus one 1-D F32 tensor per
//!   dense projection in the panel-major layout (the packed-B layout of a GEMM: panels of 16
//!   output columns, each contiguous over the inputs, the last zero-padded; element `(c, j)` of
//!   the `[in, out]` matrix at `(j / 16) · in · 16 + c · 16 + j % 16`). Projections that read
//!   the same input are stacked in output order and named after their parts:
//!   `language_model.layers.0.self_attn.q_proj+k_proj+v_proj.panels` (with the query scale of
//!   spec §2.5 folded into q), `….mlp.gate_proj+up_proj.panels`, `….o_proj.panels`,
//!   `….down_proj.panels`, the vision tower's `….self_attn.q_proj+k_proj+v_proj.panels`,
//!   `….out_proj.panels`, `….mlp.fc1.panels`, `….mlp.fc2.panels`, and the tied embedding as
//!   `language_model.embed_tokens.panels` (`[hidden, vocab]`).
//! - `paligemma-prepared.json`, the manifest, written last: format name and version, dtype,
//!   layout, a fingerprint of the source checkpoint (its safetensors headers and sizes) and of
//!   `config.json`.
//! - `config.json`, the tokenizer and the other small files of the source folder, copied.
//!
//! The loader refuses a folder of another format version, one whose `config.json` changed
//! since it was prepared, and one loaded with other options than it was prepared for
//! (`ERR_MODEL_LOAD`, naming the file). Tensors are checked for name, dtype, shape and bounds;
//! their contents are not checksummed (neither safetensors nor GGUF do; reading 12 GB to check
//! them would cost what mapping saves).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layers::Quantization;
use crate::model::{LoadOptions, PaliGemma};
use crate::weights::{LoadMonitor, Recorded, Weights};

/// The manifest's file name.
pub const MANIFEST: &str = "paligemma-prepared.json";
/// The format this version writes. Version 2 stores `q8_0` matrices as int8 panels
/// ([`crate::cpu::int8_panels`]); version 1 stored candle's blocks, which this version still
/// reads.
pub const FORMAT_VERSION: u32 = 2;
/// The format versions this version reads.
const READABLE_VERSIONS: [u32; 2] = [1, 2];
const FORMAT: &str = "paligemma-prepared";
const LAYOUT: &str = "panels16";

/// Weight formats a folder can be prepared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedDtype {
    /// f32, panel-major: loaded in place, bitwise the same outputs as the source folder in f32.
    F32,
    /// The decoder's matrices and LM head as `q8_0` or `q4k` blocks, the rest f32 (panel-major
    /// vision tower): bitwise the outputs of the source folder quantized while loading.
    Quantized(Quantization),
}

impl std::str::FromStr for PreparedDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(PreparedDtype::F32),
            "q8_0" => Ok(PreparedDtype::Quantized(Quantization::Q8_0)),
            "q4k" => Ok(PreparedDtype::Quantized(Quantization::Q4K)),
            "bf16" => Err(Error::invalid("dtype", "bf16 folders are not prepared: load the original folder with dtype 'bf16' (its bf16 matrices are made while loading); f32, q8_0 and q4k can be prepared")),
            other => Err(Error::invalid("dtype", format!("`{other}` is not a prepared dtype (f32, q8_0, q4k)"))),
        }
    }
}

impl PreparedDtype {
    fn as_str(self) -> &'static str {
        match self {
            PreparedDtype::F32 => "f32",
            PreparedDtype::Quantized(q) => q.as_str(),
        }
    }

    fn quantization(self) -> Option<Quantization> {
        match self {
            PreparedDtype::F32 => None,
            PreparedDtype::Quantized(q) => Some(q),
        }
    }
}

/// The manifest of a prepared folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub dtype: String,
    pub layout: String,
    /// SHA-256 of the source checkpoint's safetensors headers and file sizes.
    pub source_fingerprint: String,
    /// SHA-256 of `config.json` as prepared.
    pub config_sha256: String,
    /// The library version that wrote it.
    pub written_by: String,
}

/// What [`prepare`] wrote.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub tensors: usize,
    pub bytes: u64,
    pub files_copied: Vec<String>,
}

/// Writes a prepared folder for `source` (a Hugging Face folder) into `out`, which must not
/// exist yet or be empty.
pub fn prepare(source: &Path, out: &Path, dtype: PreparedDtype, monitor: LoadMonitor) -> Result<PrepareReport> {
    if source.join(MANIFEST).exists() {
        return Err(Error::invalid("model", format!("{} is already a prepared folder; prepare from the original checkpoint", source.display())));
    }
    if out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::invalid("out", format!("{} exists and is not empty", out.display())));
    }
    let config = crate::config::Config::from_dir(source)?;
    let mut weights = Weights::open(source)?;
    weights.start_recording();
    let options = LoadOptions { device: Device::Cpu, dtype: DType::F32, monitor, quantization: dtype.quantization(), ..Default::default() };
    let model = PaliGemma::from_weights(config, &weights, &options)?;
    let recorded = weights.recorded();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let bytes = write_tensors(&recorded, &out.join("model.safetensors"))?;
    drop(model);
    let files_copied = copy_side_files(source, out)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        dtype: dtype.as_str().into(),
        layout: LAYOUT.into(),
        source_fingerprint: fingerprint(&weights)?,
        config_sha256: sha256_file(&out.join("config.json"))?,
        written_by: env!("CARGO_PKG_VERSION").into(),
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    let manifest_path = out.join(MANIFEST);
    std::fs::write(&manifest_path, text).map_err(|e| Error::io(&manifest_path, e))?;
    Ok(PrepareReport { tensors: recorded.len(), bytes, files_copied })
}

/// The manifest of `dir` when it is a prepared folder, checked against this version and
/// against `options`; `None` for an ordinary folder.
pub fn check(dir: &Path, options: &LoadOptions) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::files::read_text_capped(&path, crate::files::MAX_INDEX_BYTES)?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{} is not a valid manifest: {e}", path.display())))?;
    if manifest.format != FORMAT || !READABLE_VERSIONS.contains(&manifest.version) || manifest.layout != LAYOUT {
        return Err(Error::Weights(format!(
            "{} is a {} folder of version {} ({} layout); this version reads {FORMAT} versions 1 and 2: prepare it again from the original checkpoint",
            path.display(),
            manifest.format,
            manifest.version,
            manifest.layout
        )));
    }
    if manifest.config_sha256 != sha256_file(&dir.join("config.json"))? {
        return Err(Error::Weights(format!("{}: config.json changed since the folder was prepared; prepare it again from the original checkpoint", path.display())));
    }
    let wanted = options.quantization.map_or("f32", Quantization::as_str);
    if manifest.dtype != wanted || !options.device.is_cpu() || options.dtype != DType::F32 {
        return Err(Error::Weights(format!(
            "{} holds {} weights prepared for the CPU; load it with device 'cpu' and dtype '{}', or load the original checkpoint",
            dir.display(),
            manifest.dtype,
            manifest.dtype
        )));
    }
    Ok(Some(manifest))
}

/// Writes the recorded tensors as one safetensors file (f32 all), through a temporary name.
fn write_tensors(recorded: &[(String, Recorded)], path: &Path) -> Result<u64> {
    let dropped: std::collections::HashSet<&str> = recorded.iter().filter(|(_, item)| matches!(item, Recorded::Dropped)).map(|(name, _)| name.as_str()).collect();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut panels: Vec<(String, crate::cpu::panels::PanelBuffer)> = Vec::new();
    let mut blocks: Vec<(String, std::sync::Arc<Vec<u8>>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, item) in recorded {
        if dropped.contains(name.as_str()) || !seen.insert(name.as_str()) {
            continue;
        }
        match item {
            Recorded::Tensor(t) => tensors.push((name.clone(), t.dims().to_vec(), t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)),
            Recorded::Panels(p) => panels.push((name.clone(), p.clone())),
            Recorded::Blocks(b) => blocks.push((name.clone(), b.clone())),
            Recorded::Int8Panels(p) => blocks.push((name.clone(), std::sync::Arc::new(p.stored_bytes()))),
            Recorded::Dropped => {}
        }
    }
    let view = |dtype, shape: Vec<usize>, bytes| safetensors::tensor::TensorView::new(dtype, shape, bytes).map_err(st_error);
    let mut views = Vec::new();
    for (name, shape, values) in &tensors {
        views.push((name.clone(), view(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(values))?));
    }
    for (name, buffer) in &panels {
        views.push((name.clone(), view(safetensors::Dtype::F32, vec![buffer.as_slice().len()], bytemuck::cast_slice(buffer.as_slice()))?));
    }
    // U8 last: the safetensors writer orders by alignment, so every F32 tensor stays 4-byte
    // aligned for mapping in place.
    for (name, bytes) in &blocks {
        views.push((name.clone(), view(safetensors::Dtype::U8, vec![bytes.len()], bytes.as_slice())?));
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), FORMAT.to_string());
    metadata.insert("version".to_string(), FORMAT_VERSION.to_string());
    let partial = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &partial).map_err(st_error)?;
    // The safetensors crate creates the file readable by its owner only; a model folder is
    // usually shared like the files copied beside it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
    Ok(std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

fn st_error(e: safetensors::SafeTensorError) -> Error {
    Error::Internal(format!("writing the prepared safetensors file: {e}"))
}

/// Copies the source folder's other regular files (config, tokenizer, processor settings),
/// leaving out its weights.
fn copy_side_files(source: &Path, out: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(source).map_err(|e| Error::io(source, e))? {
        let entry = entry.map_err(|e| Error::io(source, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path: PathBuf = entry.path();
        let is_weights = name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") || name.ends_with(".npz") || name == MANIFEST;
        if is_weights || name.starts_with('.') || !path.is_file() {
            continue;
        }
        std::fs::copy(&path, out.join(&name)).map_err(|e| Error::io(&path, e))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}

/// SHA-256 of the weights files' headers and sizes: it changes when any tensor's name, dtype,
/// shape or place changes, without reading gigabytes of data.
fn fingerprint(weights: &Weights) -> Result<String> {
    let mut hasher = Sha256::new();
    for (path, header, len) in weights.headers() {
        hasher.update(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        hasher.update(len.to_le_bytes());
        hasher.update(header);
    }
    Ok(hex(&hasher.finalize()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = crate::files::read_text_capped(path, crate::files::MAX_CONFIG_BYTES)?;
    Ok(hex(&Sha256::digest(bytes.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
