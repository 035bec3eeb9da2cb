//! N-API binding of the `paligemma` core: type conversion, a worker thread per model, and
//! error codes. The public, documented API is the TypeScript layer in `src/`; this surface is
//! private to it.
//!
//! Native surface:
//! - `class CancelToken { constructor(); cancel(); readonly cancelled }`
//! - `loadModel(dir, options, cancel, onProgress?) → Promise<NativeModel | NativeFailure>`
//! - `class NativeModel { info; disposed; forward(ids, pixels, cancel) → Promise<NativeForwardOutput
//!   | NativeFailure>; generate(request, cancel, onEvent); generateFromImage(request, cancel,
//!   onEvent); dispose() → Promise<void> }`
//! - `preprocessImage`, `decodeMasks`, `renderAnnotations` (see `processor`)
//! - `addonInfo() → { version, cuda }`
//!
//! Every entry point runs under [`error::guard`] and every worker job under `catch_unwind`, so
//! a Rust panic surfaces as ERR_INTERNAL and never unwinds into Node.
// `cargo test --all-targets` also compiles this crate's (empty) test harness, where the
// #[napi] exports look unused; they are used, from JavaScript.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod batched;
mod error;
mod jobs;
mod processor;
mod text;
mod prepare;
mod tools;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::{Float32Array, ObjectFinalize, Uint32Array, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::bindgen_prelude::Object;
use napi::{Env, Status};
use napi_derive::napi;
use paligemma::device::device_name;
use paligemma::{ChosenDevice, DeviceRequest, LoadMonitor, LoadOptions, LoadPhase, PaliGemma};

use crate::error::{guard, NativeFailure};
use crate::jobs::{convert_request, EventSink, ForwardJob, GenerateJob, NativeForwardOutput, NativeGenerateRequest, Settle};
use crate::worker::{CancelFlag, Job, Loaded, Queue, QueueHandle};
use paligemma::batching::BatchLimits;

/// Cancels one load or request; the TS layer wires an `AbortSignal` (or a `break`) to it.
#[napi]
pub struct CancelToken {
    flag: Arc<CancelFlag>,
}

#[napi]
impl CancelToken {
    #[napi(constructor, catch_unwind)]
    pub fn new() -> Self {
        CancelToken { flag: Arc::default() }
    }

    /// Stops the operation: a queued request is removed at once, a running one stops before its
    /// next decode step, a load stops before its next tensor.
    #[napi(catch_unwind)]
    pub fn cancel(&self) -> napi::Result<()> {
        guard(|| {
            self.flag.cancel();
            Ok(())
        })
    }

    #[napi(getter, catch_unwind)]
    pub fn cancelled(&self) -> bool {
        self.flag.is_cancelled()
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

/// Load options after the TS layer's validation.
#[napi(object)]
pub struct NativeLoadOptions {
    /// 'auto' | 'cpu' | 'cuda'
    pub device: String,
    /// 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4k'; absent = the device's default.
    pub dtype: Option<String>,
    /// 'f32' | 'bf16': the vision tower's matrices on the CPU; absent = bf16 with the bf16
    /// dtype, else f32.
    pub vision_dtype: Option<String>,
    /// CPU threads for this model's work; absent = available parallelism.
    pub threads: Option<u32>,
    /// Generations that share one decode step; absent = the device's default (CPU 16, CUDA 32).
    pub max_batch: Option<u32>,
    /// Bytes of KV cache the running generations may hold together; absent = 4 GiB.
    pub kv_cache_bytes: Option<f64>,
    /// A joining request's prefill runs in stages of this multiple of its fair share of the
    /// machine between the running rows' steps; absent = at once.
    pub prefill_share: Option<f64>,
}

#[napi(object)]
#[derive(Clone)]
pub struct NativeProgress {
    pub loaded_bytes: f64,
    pub total_bytes: f64,
    /// 'mapping' | 'converting' | 'quantizing' | 'repacking' ([`paligemma::LoadPhase`]).
    pub phase: String,
}

type ProgressSink = ThreadsafeFunction<NativeProgress, Unknown<'static>, NativeProgress, Status, false>;

/// What a loaded model is.
#[napi(object)]
#[derive(Clone)]
pub struct NativeModelInfo {
    /// 'paligemma' | 'paligemma2'
    pub architecture: String,
    pub image_size: u32,
    pub image_tokens: u32,
    pub image_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub context_length: u32,
    pub device: String,
    pub dtype: String,
    pub threads: u32,
    /// Generations that share one decode step at most.
    pub max_batch: u32,
    /// Bytes of KV cache the running generations may hold together.
    pub kv_cache_bytes: f64,
    pub has_tokenizer: bool,
    /// Bytes of tensor data in the checkpoint files.
    pub weight_bytes: f64,
    /// Why device 'auto' runs on the CPU although this build has CUDA; absent otherwise.
    pub device_fallback: Option<String>,
}

fn model_info(loaded: &Loaded, threads: usize, weight_bytes: u64) -> NativeModelInfo {
    let model = &loaded.model;
    let config = model.config();
    NativeModelInfo {
        architecture: config.architecture.as_str().to_string(),
        image_size: config.vision.image_size as u32,
        image_tokens: config.num_image_tokens() as u32,
        image_token_id: config.image_token_id,
        bos_token_id: config.bos_token_id,
        eos_token_ids: config.eos_token_ids.clone(),
        vocab_size: config.text.vocab_size as u32,
        hidden_size: config.text.hidden_size as u32,
        context_length: config.text.max_position_embeddings as u32,
        device: device_name(model.device()).to_string(),
        dtype: model.precision_name().to_string(),
        threads: threads as u32,
        max_batch: loaded.limits.max_batch as u32,
        kv_cache_bytes: loaded.limits.kv_cache_bytes as f64,
        has_tokenizer: loaded.tokenizer.is_some(),
        weight_bytes: weight_bytes as f64,
        device_fallback: loaded.device_fallback.clone(),
    }
}

static NEXT_MODEL_ID: AtomicU32 = AtomicU32::new(1);

/// Progress is reported at most this often (plus the first and the last tensor), so a
/// checkpoint with a thousand tensors does not flood the event loop.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

/// Starts a model's worker, which loads `dir` and then serves requests.
#[napi(catch_unwind, ts_return_type = "Promise<NativeModel | NativeFailure>")]
pub fn load_model<'env>(
    env: &'env Env,
    dir: String,
    options: NativeLoadOptions,
    cancel: &CancelToken,
    on_progress: Option<ProgressSink>,
) -> napi::Result<Object<'env>> {
    guard(|| {
        let threads = match options.threads {
            Some(0) => return Err(NativeFailure::invalid("threads", "must be at least 1").into_napi()),
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if options.max_batch == Some(0) {
            return Err(NativeFailure::invalid("maxBatch", "must be at least 1").into_napi());
        }
        if let Some(bytes) = options.kv_cache_bytes {
            if !(bytes.is_finite() && bytes >= 1.0 && bytes.fract() == 0.0) {
                return Err(NativeFailure::invalid("kvCacheBytes", format!("{bytes} must be a positive integer")).into_napi());
            }
        }
        if let Some(share) = options.prefill_share {
            if !(share.is_finite() && (0.0..=1000.0).contains(&share)) {
                return Err(NativeFailure::invalid("prefillShare", format!("{share} must be a number from 0 to 1000")).into_napi());
            }
        }
        let (settle, promise) = Settle::<NativeModel>::new(env)?;
        let model_id = NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        let flag = cancel.flag.clone();
        let dir = PathBuf::from(dir);
        let weight_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let total = weight_bytes.clone();
        let load = Box::new(move || -> Result<Loaded, NativeFailure> {
            let core = |e: paligemma::Error| NativeFailure::from_core(&e, false);
            let request: DeviceRequest = options.device.parse().map_err(core)?;
            let ChosenDevice { device, fallback } = paligemma::choose_device(request).map_err(core)?;
            let (dtype, quantization) = paligemma::choose_precision(options.dtype.as_deref(), &device).map_err(core)?;
            let last_sent: Mutex<Option<(Instant, LoadPhase)>> = Mutex::new(None);
            let progress = |loaded: u64, all: u64, phase: LoadPhase| {
                total.store(all, Ordering::Relaxed);
                let Some(sink) = on_progress.as_ref() else { return };
                let mut last = last_sent.lock().unwrap_or_else(|e| e.into_inner());
                // At most one report per interval, but every change of phase and the last one.
                if loaded < all && last.is_some_and(|(t, p)| p == phase && t.elapsed() < PROGRESS_INTERVAL) {
                    return;
                }
                *last = Some((Instant::now(), phase));
                let p = NativeProgress { loaded_bytes: loaded as f64, total_bytes: all as f64, phase: phase.as_str().into() };
                sink.call(p, ThreadsafeFunctionCallMode::NonBlocking);
            };
            let is_cancelled = || flag.is_cancelled();
            let monitor = LoadMonitor { on_progress: Some(&progress), is_cancelled: Some(&is_cancelled) };
            let vision_bf16 = paligemma::device::choose_vision_precision(options.vision_dtype.as_deref()).map_err(core)?;
            let load_options = LoadOptions { device, dtype, monitor, final_logit_softcap: false, quantization, vision_bf16 };
            let model = PaliGemma::load(&dir, &load_options).map_err(|e| match e {
                paligemma::Error::Aborted | paligemma::Error::DeviceUnavailable(_) | paligemma::Error::InvalidArgument { .. } => {
                    NativeFailure::from_core(&e, false)
                }
                other => NativeFailure::new(
                    other.code().as_str(),
                    format!("cannot load the model in {}: {other}", dir.display()),
                ),
            })?;
            let tokenizer = text::load(&dir, model.config())?;
            let defaults = BatchLimits::default_for(model.device());
            let limits = BatchLimits {
                max_batch: options.max_batch.map_or(defaults.max_batch, |n| n as usize),
                kv_cache_bytes: options.kv_cache_bytes.map_or(defaults.kv_cache_bytes, |b| b.min(usize::MAX as f64) as usize),
                prefill_stage_share: options.prefill_share.or(defaults.prefill_stage_share),
                step_mode: defaults.step_mode,
            };
            Ok(Loaded { model, tokenizer, device_fallback: fallback, limits })
        });
        let model_queue = QueueHandle(queue.clone());
        let on_loaded = Box::new(move |result: Result<&Loaded, NativeFailure>| match result {
            Ok(loaded) => {
                let info = model_info(loaded, threads, weight_bytes.load(Ordering::Relaxed));
                settle.resolve(move |env: Env| {
                    // Tell V8 how much native memory this small JS object holds, so that a model
                    // the program forgot to dispose() is collected under memory pressure.
                    let reported = info.weight_bytes as i64;
                    let external_bytes = if env.adjust_external_memory(reported).is_ok() { reported } else { 0 };
                    Ok(NativeModel { queue: model_queue, info, external_bytes })
                });
            }
            Err(failure) => settle.fail(failure),
        });
        if let Err(failure) = worker::spawn(queue, threads, model_id, load, on_loaded) {
            return Err(failure.into_napi());
        }
        Ok(promise)
    })
}

/// A loaded model: a handle to its worker's queue.
#[napi(custom_finalize)]
pub struct NativeModel {
    /// Closes the queue when the JS object is collected (see `QueueHandle`).
    queue: QueueHandle,
    info: NativeModelInfo,
    /// What was reported to V8 and not yet given back.
    external_bytes: i64,
}

impl NativeModel {
    fn submit(&self, flag: Arc<CancelFlag>, job: Job) {
        if let Err((mut job, failure)) = self.queue.0.submit(flag, job) {
            job.abandon(failure);
        }
    }

    fn release_external_memory(&mut self, env: &Env) {
        if self.external_bytes != 0 {
            let _ = env.adjust_external_memory(-self.external_bytes);
            self.external_bytes = 0;
        }
    }
}

#[napi]
impl NativeModel {
    #[napi(getter, catch_unwind)]
    pub fn info(&self) -> NativeModelInfo {
        self.info.clone()
    }

    #[napi(getter, catch_unwind)]
    pub fn disposed(&self) -> bool {
        self.queue.is_disposed()
    }

    /// Logits of the chosen prompt positions (all when `positions` is absent), `[rows, vocab]`.
    #[napi(catch_unwind, ts_return_type = "Promise<NativeForwardOutput | NativeFailure>")]
    pub fn forward<'env>(
        &self,
        env: &'env Env,
        input_ids: Uint32Array,
        pixel_values: Float32Array,
        cancel: &CancelToken,
        positions: Option<Uint32Array>,
    ) -> napi::Result<Object<'env>> {
        guard(|| {
            let (settle, promise) = Settle::<NativeForwardOutput>::new(env)?;
            let job = ForwardJob {
                input_ids: input_ids.to_vec(),
                pixel_values: pixel_values.to_vec(),
                positions: positions.map(|p| p.to_vec()),
                promise: Some(settle),
            };
            self.submit(cancel.flag.clone(), Job::Forward(Box::new(job)));
            Ok(promise)
        })
    }

    /// Queues a generation; results arrive through `on_event` (see `jobs`).
    #[napi(catch_unwind, ts_args_type = "request: NativeGenerateRequest, cancel: CancelToken, onEvent: (event: NativeEvent) => void")]
    pub fn generate(&self, request: NativeGenerateRequest, cancel: &CancelToken, on_event: EventSink) -> napi::Result<()> {
        guard(|| {
            let (request, stop) = match convert_request(&request) {
                Ok(converted) => converted,
                Err(failure) => {
                    jobs::send_failure(&on_event, failure);
                    return Ok(());
                }
            };
            let job = GenerateJob { flag: cancel.flag.clone(), request, stop, sink: Some(on_event), image_prompt: None };
            self.submit(cancel.flag.clone(), Job::Generate(Box::new(job)));
            Ok(())
        })
    }

    /// Queues an `{ image, prompt }` generation: on the worker, the image is decoded and resized
    /// to the model's resolution and the prompt ids are built with the model's tokenizer; then it
    /// runs like `generate`, and `done` also carries the prompt ids and the image's size.
    #[napi(catch_unwind, ts_args_type = "request: NativeImagePromptRequest, cancel: CancelToken, onEvent: (event: NativeEvent) => void")]
    pub fn generate_from_image(
        &self,
        request: processor::NativeImagePromptRequest,
        cancel: &CancelToken,
        on_event: EventSink,
    ) -> napi::Result<()> {
        guard(|| {
            let (request, stop, image_prompt) = match processor::convert_image_request(&request) {
                Ok(converted) => converted,
                Err(failure) => {
                    jobs::send_failure(&on_event, failure);
                    return Ok(());
                }
            };
            let job = GenerateJob { flag: cancel.flag.clone(), request, stop, sink: Some(on_event), image_prompt: Some(image_prompt) };
            self.submit(cancel.flag.clone(), Job::Generate(Box::new(job)));
            Ok(())
        })
    }

    /// Cancels queued and running requests (they end with ERR_DISPOSED) and resolves once the
    /// worker has dropped the weights. Calling it again is harmless.
    #[napi(catch_unwind, ts_return_type = "Promise<undefined | NativeFailure>")]
    pub fn dispose<'env>(&mut self, env: &'env Env) -> napi::Result<Object<'env>> {
        guard(|| {
            let (settle, promise) = Settle::<()>::new(env)?;
            self.release_external_memory(env);
            self.queue.dispose(Box::new(move || settle.resolve(|_| Ok(()))));
            Ok(promise)
        })
    }
}

impl ObjectFinalize for NativeModel {
    fn finalize(mut self, env: Env) -> napi::Result<()> {
        self.release_external_memory(&env);
        Ok(())
    }
}

/// How this addon was built.
#[napi(object)]
pub struct AddonInfo {
    pub version: String,
    /// Whether the addon was compiled with CUDA support.
    pub cuda: bool,
}

#[napi(catch_unwind)]
pub fn addon_info() -> AddonInfo {
    AddonInfo { version: env!("CARGO_PKG_VERSION").to_string(), cuda: cfg!(feature = "cuda") }
}
