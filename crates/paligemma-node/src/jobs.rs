//! The two request kinds a model's worker runs: a full-prompt forward pass and a generation.
//!
//! A forward pass settles a promise (a `JsDeferred`). A generation reports through one
//! threadsafe function: a `token` event per generated id, then exactly one terminal `done` or
//! `error` event. One channel keeps events in order: the terminal event can never overtake the
//! last token, which two separate channels would not guarantee.

use std::sync::Arc;

use napi::bindgen_prelude::{Either, Float32Array, Object, ToNapiValue, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsDeferred, Status};
use napi_derive::napi;
use paligemma::{GenerateRequest, SamplingParams};

use crate::error::NativeFailure;
use crate::processor::ImagePrompt;
use crate::worker::{CancelFlag, Context};

/// A promise settled from the worker thread with a value built on the JS thread.
type Deferred<T> = JsDeferred<T, Box<dyn FnOnce(Env) -> napi::Result<T> + Send>>;

/// A promise that resolves with a `T` or a [`NativeFailure`], exactly once. napi's deferred has
/// no `Drop`: one dropped unsettled would keep its threadsafe function, and so the event loop,
/// alive forever. Dropping a `Settle` unsettled therefore settles it with ERR_INTERNAL.
pub(crate) struct Settle<T: 'static>
where
    Either<T, NativeFailure>: ToNapiValue,
{
    deferred: Option<Deferred<Either<T, NativeFailure>>>,
}

impl<T: 'static> Settle<T>
where
    Either<T, NativeFailure>: ToNapiValue,
{
    pub fn new(env: &Env) -> napi::Result<(Self, Object<'_>)> {
        let (deferred, promise) = env.create_deferred()?;
        Ok((Settle { deferred: Some(deferred) }, promise))
    }

    /// Resolves with the value `make` builds on the JS thread.
    pub fn resolve(mut self, make: impl FnOnce(Env) -> napi::Result<T> + Send + 'static) {
        if let Some(deferred) = self.deferred.take() {
            deferred.resolve(Box::new(move |env| make(env).map(Either::A)));
        }
    }

    pub fn fail(mut self, failure: NativeFailure) {
        if let Some(deferred) = self.deferred.take() {
            deferred.resolve(Box::new(move |_| Ok(Either::B(failure))));
        }
    }
}

impl<T: 'static> Drop for Settle<T>
where
    Either<T, NativeFailure>: ToNapiValue,
{
    fn drop(&mut self) {
        if let Some(deferred) = self.deferred.take() {
            let failure = NativeFailure::internal("the operation was dropped before it finished");
            deferred.resolve(Box::new(move |_| Ok(Either::B(failure))));
        }
    }
}


// ---------------------------------------------------------------------------------------------
// forward

/// Logits of every prompt position.
#[napi(object)]
pub struct NativeForwardOutput {
    /// Row-major `[seq, vocab]`.
    pub logits: Float32Array,
    pub dims: Vec<u32>,
}

pub(crate) struct ForwardJob {
    pub input_ids: Vec<u32>,
    pub pixel_values: Vec<f32>,
    /// Positions whose logits are returned; `None`: every position.
    pub positions: Option<Vec<u32>>,
    pub promise: Option<Settle<NativeForwardOutput>>,
}

/// Largest logits array `forward` returns: one JS `Float32Array` of at most 2 GiB. PaliGemma's
/// 257 152-entry vocabulary reaches it at 2 087 positions; ask for fewer positions past that.
pub(crate) const MAX_FORWARD_LOGITS_BYTES: u64 = 2 << 30;

impl ForwardJob {
    fn compute(&self, ctx: &Context) -> Result<(Vec<f32>, Vec<u32>), NativeFailure> {
        let core = |e: paligemma::Error| NativeFailure::from_core(&e, ctx.is_disposed());
        let rows = self.positions.as_ref().map_or(self.input_ids.len(), Vec::len) as u64;
        let vocab = ctx.model.config().text.vocab_size as u64;
        let bytes = rows.saturating_mul(vocab).saturating_mul(4);
        if bytes > MAX_FORWARD_LOGITS_BYTES {
            return Err(NativeFailure::invalid(
                "positions",
                format!(
                    "logits for {rows} positions × {vocab} vocabulary entries are {bytes} bytes, more than the \
                     {MAX_FORWARD_LOGITS_BYTES}-byte limit; pass `positions: 'last'` or a list of positions"
                ),
            ));
        }
        let logits = ctx.model.forward_at(&self.input_ids, &self.pixel_values, self.positions.as_deref()).map_err(core)?;
        let dims = logits.dims().iter().map(|&d| d as u32).collect();
        let values = logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| core(e.into()))?;
        Ok((values, dims))
    }
}

impl ForwardJob {
    pub(crate) fn run(&mut self, ctx: &Context) {
        let result = self.compute(ctx);
        let Some(promise) = self.promise.take() else { return };
        match result {
            Ok((values, dims)) => {
                promise.resolve(move |_| Ok(NativeForwardOutput { logits: Float32Array::new(values), dims }))
            }
            Err(failure) => promise.fail(failure),
        }
    }

    pub(crate) fn abandon(&mut self, failure: NativeFailure) {
        if let Some(promise) = self.promise.take() {
            promise.fail(failure);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generate

/// A pre-tokenized generation request as JS sends it (already validated by the TS layer;
/// checked again here and by the core).
#[napi(object, object_to_js = false)]
pub struct NativeGenerateRequest {
    pub input_ids: napi::bindgen_prelude::Uint32Array,
    pub pixel_values: Float32Array,
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub repetition_penalty: f64,
    /// A non-negative integer ≤ 2^53 − 1 (JS numbers are exact up to there).
    pub seed: f64,
    pub stop: Vec<String>,
    /// Gemma 2's sliding window on its sliding layers (off: full attention).
    pub sliding_window: Option<bool>,
}

/// Durations in milliseconds and counts of one generation.
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct NativeTimings {
    /// Waiting in the model's queue behind earlier requests.
    pub queued_ms: f64,
    /// Vision tower + prompt prefill, until the first token is chosen.
    pub prefill_ms: f64,
    /// Every decode step after the first token.
    pub decode_ms: f64,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// Decoder steps run after prefill (generated tokens − 1, or + 0 when EOS ended the run,
    /// because choosing EOS took one more step).
    pub decode_steps: u32,
    /// Whether decode steps were replayed from a captured CUDA graph.
    pub decode_graph: bool,
    /// The most requests that shared one of this request's decode steps (1: it ran alone).
    pub batch_size: u32,
}

#[napi(object)]
pub struct NativeGenerateOutput {
    pub token_ids: Vec<u32>,
    pub text: String,
    /// 'eos' | 'length' | 'stop'
    pub finish_reason: String,
    pub timings: NativeTimings,
    /// `{ image, prompt }` requests only: the prompt ids the model saw (image tokens included).
    pub prompt_ids: Option<Vec<u32>>,
    /// `{ image, prompt }` requests only: the decoded image's size before resizing.
    pub image_width: Option<u32>,
    pub image_height: Option<u32>,
}

/// One message of a generation's event channel.
#[napi(object)]
pub struct NativeEvent {
    /// 'token' | 'done' | 'error'
    pub kind: String,
    pub token_id: Option<u32>,
    pub index: Option<u32>,
    pub text: Option<String>,
    pub output: Option<NativeGenerateOutput>,
    pub error: Option<NativeFailure>,
}

pub(crate) type EventSink = ThreadsafeFunction<NativeEvent, Unknown<'static>, NativeEvent, Status, false>;

const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Copies the typed arrays (on the JS thread) and checks what the core does not.
pub(crate) fn convert_request(req: &NativeGenerateRequest) -> Result<(GenerateRequest, Vec<String>), NativeFailure> {
    if req.max_new_tokens == 0 {
        return Err(NativeFailure::invalid("maxNewTokens", "must be at least 1"));
    }
    let sampling = sampling_params(req.temperature, req.top_k, req.top_p, req.repetition_penalty, req.seed, &req.stop)?;
    let request = GenerateRequest {
        input_ids: req.input_ids.to_vec(),
        pixel_values: req.pixel_values.to_vec(),
        max_new_tokens: req.max_new_tokens as usize,
        sampling,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        sliding_window: req.sliding_window.unwrap_or(false),
    };
    Ok((request, req.stop.clone()))
}

/// The checks shared by every kind of generation request (tokenized or `{ image, prompt }`).
pub(crate) fn sampling_params(
    temperature: f64,
    top_k: u32,
    top_p: f64,
    repetition_penalty: f64,
    seed: f64,
    stop: &[String],
) -> Result<SamplingParams, NativeFailure> {
    if !(seed.is_finite() && seed >= 0.0 && seed.fract() == 0.0 && seed <= MAX_SAFE_INTEGER) {
        return Err(NativeFailure::invalid("seed", format!("{seed} must be an integer in [0, 2^53 − 1]")));
    }
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(NativeFailure::invalid("stop", format!("entry {i} is an empty string")));
    }
    let sampling = SamplingParams { temperature, top_k: top_k as usize, top_p, repetition_penalty, seed: seed as u64 };
    sampling.validate().map_err(|e| NativeFailure::from_core(&e, false))?;
    Ok(sampling)
}

pub(crate) struct GenerateJob {
    pub flag: Arc<CancelFlag>,
    pub request: GenerateRequest,
    pub stop: Vec<String>,
    pub sink: Option<EventSink>,
    /// An `{ image, prompt }` request: turned into `request`'s ids and pixels on the worker,
    /// where the image decode stays off the event loop and keeps the request's queue position.
    pub image_prompt: Option<ImagePrompt>,
}

impl NativeEvent {
    /// An event of `kind` with nothing filled in.
    pub(crate) fn of(kind: &str) -> NativeEvent {
        NativeEvent { kind: kind.to_string(), token_id: None, index: None, text: None, output: None, error: None }
    }
}

/// Sends an event; false when JS can no longer receive (the environment is shutting down).
pub(crate) fn send(sink: &EventSink, ev: NativeEvent) -> bool {
    sink.call(ev, ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
}

/// Ends a generation that never reached the queue.
pub(crate) fn send_failure(sink: &EventSink, failure: NativeFailure) {
    send(sink, NativeEvent { error: Some(failure), ..NativeEvent::of("error") });
}

impl GenerateJob {
    /// Sends the terminal event, once; later calls do nothing.
    pub(crate) fn finish(&mut self, result: Result<NativeGenerateOutput, NativeFailure>) {
        let Some(sink) = self.sink.take() else { return };
        let ev = match result {
            Ok(output) => NativeEvent { output: Some(output), ..NativeEvent::of("done") },
            Err(failure) => NativeEvent { error: Some(failure), ..NativeEvent::of("error") },
        };
        send(&sink, ev);
        // Dropping the sink releases the threadsafe function, so the event loop may exit.
    }
}

impl Drop for GenerateJob {
    fn drop(&mut self) {
        self.finish(Err(NativeFailure::internal("the request was dropped before it finished")));
    }
}
