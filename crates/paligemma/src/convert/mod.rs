//! Google's big_vision `.npz` checkpoints → the Hugging Face layout this crate (and
//! transformers) loads: `model.safetensors` or shards plus `model.safetensors.index.json`,
//! `config.json`, and the tokenizer when given. Also the segmentation VAE (`vae-oid.npz`).
//!
//! Conversion streams: arrays are read one layer slice at a time and appended to the output, so
//! peak memory is about two slices (the widened source and the permuted output), never the
//! checkpoint. The mapping is spec §5.1; the reader accepts what numpy writes (spec §5.1 notes
//! that bf16 checkpoints use the 2-byte void dtype).

mod big_vision;
mod infer;
mod npy;
mod npz;
mod transform;
mod vae;
mod writer;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use npy::{read_header as read_npy_header, write_header as write_npy_header, NpyDtype, NpyHeader};
pub use npz::{ArrayInfo, NpzArchive};
pub use transform::OutputDtype;
pub use vae::VaeReport;

use crate::config::Config;
use crate::error::{Error, Result};
use big_vision::{EmbeddingJob, Job, EMBED_TOKENS};
use transform::{permute_encode, read_f32};
use writer::{PlannedTensor, ShardedWriter};

/// Default data bytes per file (transformers' `save_pretrained` uses 5 GB; any size loads alike).
pub const DEFAULT_SHARD_BYTES: u64 = 4 << 30;

/// How to convert a big_vision checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// A `config.json` to use instead of inferring one from the array shapes. Needed for
    /// anything shapes cannot tell (e.g. `image_token_index` of a non-standard vocabulary).
    pub config_override: Option<PathBuf>,
    /// Output dtype; `None` keeps the checkpoint's (the embedding's) dtype.
    pub dtype: Option<OutputDtype>,
    /// A `tokenizer.json` (copied as `tokenizer.json`), another tokenizer file (copied under
    /// its own name), or a folder whose tokenizer files are copied.
    pub tokenizer: Option<PathBuf>,
    /// Maximum bytes of tensor data per `.safetensors` file.
    pub shard_bytes: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { config_override: None, dtype: None, tokenizer: None, shard_bytes: DEFAULT_SHARD_BYTES }
    }
}

/// What [`convert_big_vision`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The `.safetensors` files, in order (one unless sharded).
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    /// Bytes of tensor data (the index's `metadata.total_size`).
    pub bytes: u64,
    pub dtype: OutputDtype,
    pub config: Config,
    /// Whether `config.json` was inferred from shapes rather than given.
    pub config_inferred: bool,
    /// Embedding rows appended to reach the vocabulary size (each the mean row).
    pub padded_rows: usize,
    pub tokenizer_files: Vec<PathBuf>,
    /// Guesses the caller should check (e.g. an uninferable `image_token_index`).
    pub warnings: Vec<String>,
}

impl ConvertReport {
    pub fn shards(&self) -> usize {
        self.files.len()
    }

    /// One line for logs and CLIs.
    pub fn summary(&self) -> String {
        let (t, v) = (&self.config.text, &self.config.vision);
        format!(
            "{} tensors, {} bytes in {} file(s), {}; {} text L={} D={} heads={}/{} head_dim={} F={} vocab={}, vision {}px/{} L={} W={}; config {}",
            self.tensors,
            self.bytes,
            self.shards(),
            self.dtype.torch_name(),
            self.config.architecture.as_str(),
            t.num_hidden_layers,
            t.hidden_size,
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
            t.intermediate_size,
            t.vocab_size,
            v.image_size,
            v.patch_size,
            v.num_hidden_layers,
            v.hidden_size,
            if self.config_inferred { "inferred" } else { "given" }
        )
    }
}

/// Strips the `params/` prefix big_vision trees carry (and a stray leading `/`).
pub fn strip_key(name: &str) -> &str {
    let name = name.trim_start_matches('/');
    name.strip_prefix("params/").unwrap_or(name)
}

/// Converts a big_vision PaliGemma / PaliGemma 2 checkpoint into an HF folder at `out_dir`.
pub fn convert_big_vision(npz: &Path, out_dir: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let mut archive = NpzArchive::open(npz)?;
    let sources = keyed_arrays(&archive)?;
    let shapes: BTreeMap<String, Vec<usize>> = sources.iter().map(|(k, a)| (k.clone(), a.shape.clone())).collect();
    let source_dtype = sources.get(big_vision::EMBEDDING).or_else(|| sources.values().next()).map(|a| a.dtype);
    let dtype = opts.dtype.or(source_dtype.map(OutputDtype::from_source)).unwrap_or(OutputDtype::F32);
    let resolved = resolve_config(opts.config_override.as_deref(), &shapes, dtype)?;
    let (config, mut warnings) = (resolved.config, resolved.warnings);
    let (embedding, jobs) = big_vision::plan(&config, &shapes)?;
    if embedding.vocab > embedding.rows {
        warnings.push(format!(
            "appended {} mean rows to the embedding ({} → {}); they are only reachable through the image placeholder, whose embedding is replaced",
            embedding.vocab - embedding.rows,
            embedding.rows,
            embedding.vocab
        ));
    }

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut planned = vec![PlannedTensor { name: EMBED_TOKENS.into(), shape: vec![embedding.vocab, embedding.dim], dtype }];
    for job in &jobs {
        planned.extend(job.outputs.iter().map(|(name, shape)| PlannedTensor { name: name.clone(), shape: shape.clone(), dtype }));
    }
    let tensors = planned.len();
    let mut out = ShardedWriter::new(out_dir, planned, opts.shard_bytes)?;
    let array = |key: &str| sources.get(key).ok_or_else(|| Error::Internal(format!("`{key}` vanished from the plan")));
    write_embedding(&mut archive, array(&embedding.key)?, &embedding, dtype, &mut out)?;
    for job in &jobs {
        write_job(&mut archive, array(&job.key)?, job, dtype, &mut out)?;
    }
    let (files, bytes) = out.finish()?;

    let config_path = out_dir.join("config.json");
    std::fs::write(&config_path, resolved.text).map_err(|e| Error::io(&config_path, e))?;
    let tokenizer_files = match &opts.tokenizer {
        Some(path) => copy_tokenizer(path, out_dir)?,
        None => Vec::new(),
    };
    Ok(ConvertReport {
        files,
        tensors,
        bytes,
        dtype,
        config,
        config_inferred: resolved.inferred,
        padded_rows: embedding.vocab - embedding.rows,
        tokenizer_files,
        warnings,
    })
}

/// Arrays by stripped key; two arrays may not collapse onto one key.
fn keyed_arrays<R: Read + std::io::Seek>(archive: &NpzArchive<R>) -> Result<BTreeMap<String, ArrayInfo>> {
    let mut sources = BTreeMap::new();
    for info in archive.arrays() {
        if let Some(previous) = sources.insert(strip_key(&info.name).to_string(), info.clone()) {
            return Err(Error::Convert(format!("arrays `{}` and `{}` have the same key", previous.name, info.name)));
        }
    }
    Ok(sources)
}

struct ResolvedConfig {
    /// Written verbatim as `config.json` (a given file is kept byte for byte).
    text: String,
    config: Config,
    inferred: bool,
    warnings: Vec<String>,
}

/// The given config file, or one inferred from the shapes.
fn resolve_config(given: Option<&Path>, shapes: &BTreeMap<String, Vec<usize>>, dtype: OutputDtype) -> Result<ResolvedConfig> {
    if let Some(path) = given {
        let text = crate::files::read_text_capped(path, crate::files::MAX_CONFIG_BYTES)?;
        let config = Config::from_json_str(&text)?;
        return Ok(ResolvedConfig { text, config, inferred: false, warnings: Vec::new() });
    }
    let guess = infer::infer_config(shapes, dtype)?;
    let text = serde_json::to_string_pretty(&guess.json).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    let config = Config::from_json(&guess.json)?;
    Ok(ResolvedConfig { text, config, inferred: true, warnings: guess.warnings })
}

/// Converts the segmentation VAE (`vae-oid.npz`) to one f32 safetensors file at `out`.
pub fn convert_vae(npz: &Path, out: &Path) -> Result<VaeReport> {
    vae::convert(npz, out)
}

/// One unit (layer slice) at a time: read, widen, permute, encode, append.
fn write_job<R: Read + std::io::Seek>(
    archive: &mut NpzArchive<R>,
    source: &ArrayInfo,
    job: &Job,
    dtype: OutputDtype,
    out: &mut ShardedWriter,
) -> Result<()> {
    let unit = job.unit_dims();
    let numel: usize = unit.iter().product();
    archive.stream(&source.name, |r| {
        for (name, _) in &job.outputs {
            let values = read_f32(r, source.dtype, numel, &source.name)?;
            let bytes = permute_encode(&values, unit, &job.perm, dtype);
            drop(values);
            out.begin(name)?;
            out.write(&bytes)?;
        }
        Ok(())
    })
}

/// Copies the embedding in row chunks, then appends the mean row up to the vocabulary size.
///
/// transformers' converter samples the extra rows from N(mean, 1e-5·cov); randomness cannot be
/// matched, and it does not matter: the only id ≥ the source rows that is ever fed is the
/// `<image>` placeholder, whose embedding the model replaces with image features.
fn write_embedding<R: Read + std::io::Seek>(
    archive: &mut NpzArchive<R>,
    source: &ArrayInfo,
    job: &EmbeddingJob,
    dtype: OutputDtype,
    out: &mut ShardedWriter,
) -> Result<()> {
    let chunk_rows = ((32usize << 20) / (job.dim * 4)).max(1);
    let for_chunks = |r: &mut dyn Read, f: &mut dyn FnMut(&[f32]) -> Result<()>| -> Result<()> {
        let mut left = job.rows;
        while left > 0 {
            let n = left.min(chunk_rows);
            f(&read_f32(r, source.dtype, n * job.dim, &source.name)?)?;
            left -= n;
        }
        Ok(())
    };
    let mean = if job.vocab > job.rows {
        let mut sums = vec![0f64; job.dim];
        archive.stream(&source.name, |r| {
            for_chunks(r, &mut |values| {
                for row in values.chunks_exact(job.dim) {
                    sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
                }
                Ok(())
            })
        })?;
        Some(sums.iter().map(|s| (s / job.rows as f64) as f32).collect::<Vec<f32>>())
    } else {
        None
    };
    out.begin(EMBED_TOKENS)?;
    archive.stream(&source.name, |r| {
        for_chunks(r, &mut |values| {
            let mut bytes = Vec::with_capacity(values.len() * dtype.size());
            dtype.encode_into(values.iter().copied(), &mut bytes);
            out.write(&bytes)
        })
    })?;
    if let Some(mean) = mean {
        let mut row = Vec::with_capacity(job.dim * dtype.size());
        dtype.encode_into(mean.into_iter(), &mut row);
        for _ in job.rows..job.vocab {
            out.write(&row)?;
        }
    }
    Ok(())
}

/// Tokenizer files transformers and this crate look for.
const TOKENIZER_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"];

fn copy_tokenizer(path: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let pairs: Vec<(PathBuf, String)> = if path.is_dir() {
        TOKENIZER_FILES.iter().map(|n| (path.join(n), n.to_string())).filter(|(p, _)| p.is_file()).collect()
    } else {
        let own = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = if TOKENIZER_FILES.contains(&own.as_str()) { own } else { "tokenizer.json".to_string() };
        vec![(path.to_path_buf(), name)]
    };
    if pairs.is_empty() {
        return Err(Error::Tokenizer(format!("{} holds none of {TOKENIZER_FILES:?}", path.display())));
    }
    let mut copied = Vec::new();
    for (from, name) in pairs {
        let to = out_dir.join(name);
        // Copying a file onto itself would truncate it.
        if from.canonicalize().ok().is_some_and(|f| to.canonicalize().ok() == Some(f)) {
            copied.push(to);
            continue;
        }
        std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
        copied.push(to);
    }
    Ok(copied)
}
