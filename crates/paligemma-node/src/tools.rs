//! Model tooling for the CLI and the TypeScript helpers: describe a checkpoint from its
//! `config.json` alone (no weights read), and convert Google's big_vision `.npz` files.
//!
//! Native surface:
//! - `inspectModel(dir) → NativeModelSummary` (synchronous: one small file; throws `CODE: …`)
//! - `convertCheckpoint(npz, outDir, options) → Promise<NativeConvertReport | NativeFailure>`
//! - `convertVae(npz, out) → Promise<NativeVaeReport | NativeFailure>`
//!
//! The conversions run on libuv's thread pool ([`AsyncTask`]) and, like every asynchronous
//! result of this binding, resolve with a [`NativeFailure`] value instead of rejecting. A panic
//! inside a conversion is caught and becomes ERR_INTERNAL.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::str::FromStr;

use napi::bindgen_prelude::{AsyncTask, Either};
use napi::{Env, Task};
use napi_derive::napi;
use paligemma::config::TensorSpec;
use paligemma::convert::{self, ConvertOptions, OutputDtype, DEFAULT_SHARD_BYTES};
use paligemma::{Architecture, Config, LayerType};

use crate::error::{guard, NativeFailure};

/// A checkpoint described by its `config.json`.
#[napi(object)]
pub struct NativeModelSummary {
    /// 'paligemma' | 'paligemma2'
    pub architecture: String,
    pub image_size: u32,
    pub patch_size: u32,
    pub image_tokens: u32,
    pub image_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    pub vision_layers: u32,
    pub vision_hidden_size: u32,
    pub vision_intermediate_size: u32,
    pub vision_heads: u32,
    pub text_layers: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    /// Gemma 2's sliding-window span; absent for Gemma.
    pub sliding_window: Option<u32>,
    /// Decoder layers that attend within the sliding window.
    pub sliding_layers: u32,
    /// Every parameter the config implies (the tied LM head counted once).
    pub parameter_count: f64,
    /// Parameters of the SigLIP vision tower.
    pub vision_parameters: f64,
    /// Parameters of the projector.
    pub projector_parameters: f64,
    /// Parameters of the decoder, embedding included.
    pub text_parameters: f64,
    /// Parameters of the token embedding alone.
    pub embedding_parameters: f64,
    /// Tensors in the checkpoint.
    pub tensor_count: u32,
}

fn summarize(config: &Config) -> NativeModelSummary {
    let manifest = config.tensor_manifest();
    let sum = |pick: &dyn Fn(&TensorSpec) -> bool| -> f64 {
        manifest.iter().filter(|t| pick(t)).map(|t| t.numel() as f64).sum()
    };
    let (v, t) = (&config.vision, &config.text);
    NativeModelSummary {
        architecture: config.architecture.as_str().to_string(),
        image_size: v.image_size as u32,
        patch_size: v.patch_size as u32,
        image_tokens: config.num_image_tokens() as u32,
        image_token_id: config.image_token_id,
        bos_token_id: config.bos_token_id,
        eos_token_ids: config.eos_token_ids.clone(),
        vision_layers: v.num_hidden_layers as u32,
        vision_hidden_size: v.hidden_size as u32,
        vision_intermediate_size: v.intermediate_size as u32,
        vision_heads: v.num_attention_heads as u32,
        text_layers: t.num_hidden_layers as u32,
        hidden_size: t.hidden_size as u32,
        intermediate_size: t.intermediate_size as u32,
        heads: t.num_attention_heads as u32,
        kv_heads: t.num_key_value_heads as u32,
        head_dim: t.head_dim as u32,
        vocab_size: t.vocab_size as u32,
        context_length: t.max_position_embeddings as u32,
        sliding_window: match config.architecture {
            Architecture::PaliGemma2 => t.sliding_window.map(|w| w as u32),
            Architecture::PaliGemma => None,
        },
        sliding_layers: t.layer_types.iter().filter(|l| **l == LayerType::Sliding).count() as u32,
        parameter_count: config.parameter_count() as f64,
        vision_parameters: sum(&|s| s.name.starts_with("vision_tower.")),
        projector_parameters: sum(&|s| s.name.starts_with("multi_modal_projector.")),
        text_parameters: sum(&|s| s.name.starts_with("language_model.")),
        embedding_parameters: sum(&|s| s.name == "language_model.embed_tokens.weight"),
        tensor_count: manifest.len() as u32,
    }
}

/// Reads and validates `<dir>/config.json` and describes the model it implies. Reads no weights.
#[napi(catch_unwind)]
pub fn inspect_model(dir: String) -> napi::Result<NativeModelSummary> {
    guard(|| {
        let config = Config::from_dir(&PathBuf::from(&dir)).map_err(|e| {
            NativeFailure::new(e.code().as_str(), format!("cannot read the model config in {dir}: {e}")).into_napi()
        })?;
        Ok(summarize(&config))
    })
}

/// Options of `convertCheckpoint`.
#[napi(object)]
pub struct NativeConvertOptions {
    /// A `config.json` to use instead of inferring one from the array shapes.
    pub config: Option<String>,
    /// 'f32' | 'bf16' | 'f16'; absent = the checkpoint's own precision.
    pub dtype: Option<String>,
    /// A `tokenizer.json` (or a folder of tokenizer files) to copy next to the weights.
    pub tokenizer: Option<String>,
    /// Maximum bytes of tensor data per `.safetensors` file.
    pub shard_bytes: Option<f64>,
}

/// What `convertCheckpoint` wrote.
#[napi(object)]
pub struct NativeConvertReport {
    pub files: Vec<String>,
    pub tensors: u32,
    pub bytes: f64,
    /// 'f32' | 'bf16' | 'f16'
    pub dtype: String,
    pub architecture: String,
    pub config_inferred: bool,
    pub padded_rows: u32,
    pub tokenizer_files: Vec<String>,
    pub warnings: Vec<String>,
    /// One line for logs.
    pub summary: String,
}

/// What `convertVae` wrote.
#[napi(object)]
pub struct NativeVaeReport {
    pub path: String,
    pub tensors: u32,
    pub bytes: f64,
    /// `[codebook entries, embedding width]`.
    pub codebook: Vec<u32>,
}

fn dtype_name(dtype: OutputDtype) -> &'static str {
    match dtype {
        OutputDtype::F32 => "f32",
        OutputDtype::BF16 => "bf16",
        OutputDtype::F16 => "f16",
    }
}

fn display(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs `f`, turning a panic into ERR_INTERNAL and an error into its code.
pub(crate) fn run_guarded<T>(f: impl FnOnce() -> Result<T, NativeFailure>) -> Either<T, NativeFailure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Either::A(value),
        Ok(Err(failure)) => Either::B(failure),
        Err(payload) => Either::B(NativeFailure::from_panic(payload)),
    }
}

pub struct ConvertTask {
    npz: PathBuf,
    out_dir: PathBuf,
    options: Result<ConvertOptions, NativeFailure>,
}

impl Task for ConvertTask {
    type Output = Either<NativeConvertReport, NativeFailure>;
    type JsValue = Either<NativeConvertReport, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let options = self.options.clone();
        let (npz, out_dir) = (self.npz.clone(), self.out_dir.clone());
        Ok(run_guarded(move || {
            let options = options?;
            let report = convert::convert_big_vision(&npz, &out_dir, &options).map_err(|e| {
                NativeFailure::new(e.code().as_str(), format!("cannot convert {}: {e}", npz.display()))
            })?;
            Ok(NativeConvertReport {
                files: report.files.iter().map(|p| display(p)).collect(),
                tensors: report.tensors as u32,
                bytes: report.bytes as f64,
                dtype: dtype_name(report.dtype).to_string(),
                architecture: report.config.architecture.as_str().to_string(),
                config_inferred: report.config_inferred,
                padded_rows: report.padded_rows as u32,
                tokenizer_files: report.tokenizer_files.iter().map(|p| display(p)).collect(),
                warnings: report.warnings.clone(),
                summary: report.summary(),
            })
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

fn convert_options(options: Option<NativeConvertOptions>) -> Result<ConvertOptions, NativeFailure> {
    let Some(options) = options else { return Ok(ConvertOptions::default()) };
    let dtype = match options.dtype.as_deref() {
        None => None,
        Some(name) => Some(OutputDtype::from_str(name).map_err(|e| NativeFailure::from_core(&e, false))?),
    };
    let shard_bytes = match options.shard_bytes {
        None => DEFAULT_SHARD_BYTES,
        Some(n) if n.is_finite() && n >= 1.0 && n <= u64::MAX as f64 => n as u64,
        Some(n) => return Err(NativeFailure::invalid("shardBytes", format!("{n} is not a positive byte count"))),
    };
    Ok(ConvertOptions {
        config_override: options.config.map(PathBuf::from),
        dtype,
        tokenizer: options.tokenizer.map(PathBuf::from),
        shard_bytes,
    })
}

/// Converts a big_vision PaliGemma / PaliGemma 2 `.npz` checkpoint into a Hugging Face-layout
/// folder (`config.json`, `model.safetensors` or shards with an index, the tokenizer if given).
#[napi(catch_unwind, ts_return_type = "Promise<NativeConvertReport | NativeFailure>")]
pub fn convert_checkpoint(npz: String, out_dir: String, options: Option<NativeConvertOptions>) -> AsyncTask<ConvertTask> {
    AsyncTask::new(ConvertTask { npz: PathBuf::from(npz), out_dir: PathBuf::from(out_dir), options: convert_options(options) })
}

pub struct ConvertVaeTask {
    npz: PathBuf,
    out: PathBuf,
}

impl Task for ConvertVaeTask {
    type Output = Either<NativeVaeReport, NativeFailure>;
    type JsValue = Either<NativeVaeReport, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (npz, out) = (self.npz.clone(), self.out.clone());
        Ok(run_guarded(move || {
            let report = convert::convert_vae(&npz, &out).map_err(|e| {
                NativeFailure::new(e.code().as_str(), format!("cannot convert {}: {e}", npz.display()))
            })?;
            Ok(NativeVaeReport {
                path: display(&report.path),
                tensors: report.tensors as u32,
                bytes: report.bytes as f64,
                codebook: report.codebook.iter().map(|&n| n as u32).collect(),
            })
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

/// Converts the segmentation VAE (`vae-oid.npz`) into one f32 `.safetensors` file.
#[napi(catch_unwind, ts_return_type = "Promise<NativeVaeReport | NativeFailure>")]
pub fn convert_vae(npz: String, out: String) -> AsyncTask<ConvertVaeTask> {
    AsyncTask::new(ConvertVaeTask { npz: PathBuf::from(npz), out: PathBuf::from(out) })
}
