//! A JS generation as a row of the model's continuous batch ([`paligemma::batching`]).
//!
//! The worker hands every generation to one [`Scheduler`]; this is what each row does at the
//! scheduler's call points: resolve an `{ image, prompt }` request when it is admitted, turn new
//! ids into text and `token` events (holding back possible stop strings), and send the one
//! terminal `done` or `error` event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use paligemma::batching::RowHandler;
use paligemma::{Control, FinishReason, GenerateOutput, GenerateRequest, PaliGemma};

use crate::error::NativeFailure;
use crate::jobs::{send, GenerateJob, NativeEvent, NativeGenerateOutput, NativeTimings};
use crate::processor::PreparedPrompt;
use crate::text::TextState;
use crate::worker::Context;

/// One generation in the batch.
pub(crate) struct BatchedGeneration<'a> {
    job: GenerateJob,
    ctx: Context<'a>,
    queued_at: Instant,
    queued_ms: f64,
    text: Option<TextState>,
    prepared: Option<PreparedPrompt>,
    full_text: String,
    index: u32,
    /// JS can no longer receive events (the environment is shutting down).
    js_gone: AtomicBool,
    /// A failure of ours (not the core's) that ends the request, reported by `finish`.
    failure: Option<NativeFailure>,
}

impl<'a> BatchedGeneration<'a> {
    pub fn new(job: GenerateJob, ctx: Context<'a>, queued_at: Instant) -> Self {
        BatchedGeneration {
            job,
            ctx,
            queued_at,
            queued_ms: 0.0,
            text: None,
            prepared: None,
            full_text: String::new(),
            index: 0,
            js_gone: AtomicBool::new(false),
            failure: None,
        }
    }

    /// Records `failure` and returns the core error that carries it to `finish`.
    fn fail(&mut self, failure: NativeFailure) -> paligemma::Error {
        self.failure = Some(failure);
        paligemma::Error::Internal("reported by the binding".into())
    }

    fn output(&mut self, output: GenerateOutput) -> Result<NativeGenerateOutput, NativeFailure> {
        if output.finish_reason != FinishReason::Stop {
            if let Some(text) = self.text.as_mut() {
                self.full_text.push_str(&text.finish());
            }
        }
        let t = &output.timings;
        let generated = output.token_ids.len() as u32;
        let decode_steps = match output.finish_reason {
            FinishReason::Eos => generated,
            _ => generated.saturating_sub(1),
        };
        let prepared = self.prepared.take();
        Ok(NativeGenerateOutput {
            token_ids: output.token_ids,
            text: std::mem::take(&mut self.full_text),
            finish_reason: output.finish_reason.as_str().to_string(),
            timings: NativeTimings {
                queued_ms: self.queued_ms,
                prefill_ms: t.prefill_ms,
                decode_ms: t.decode_ms,
                prompt_tokens: t.prompt_tokens as u32,
                generated_tokens: generated,
                decode_steps,
                decode_graph: t.decode_graph,
                batch_size: t.batch_size as u32,
            },
            image_width: prepared.as_ref().map(|p| p.width),
            image_height: prepared.as_ref().map(|p| p.height),
            prompt_ids: prepared.map(|p| p.prompt_ids),
        })
    }
}

impl RowHandler for BatchedGeneration<'_> {
    fn prepare(&mut self, _model: &PaliGemma) -> paligemma::Result<GenerateRequest> {
        self.queued_ms = self.queued_at.elapsed().as_secs_f64() * 1e3;
        let mut request = self.job.request.clone();
        if let Some(prompt) = self.job.image_prompt.take() {
            match prompt.prepare(&self.ctx, &mut request) {
                Ok(prepared) => self.prepared = Some(prepared),
                Err(failure) => return Err(self.fail(failure)),
            }
        }
        match TextState::new(self.ctx.tokenizer, &self.job.stop) {
            Ok(text) => self.text = Some(text),
            Err(failure) => return Err(self.fail(failure)),
        }
        Ok(request)
    }

    fn on_token(&mut self, id: u32) -> Control {
        let Some(text) = self.text.as_mut() else { return Control::Stop };
        let push = match text.push(id) {
            Ok(push) => push,
            Err(failure) => {
                self.failure = Some(failure);
                return Control::Stop;
            }
        };
        self.full_text.push_str(&push.text);
        let ev = NativeEvent { token_id: Some(id), index: Some(self.index), text: Some(push.text), ..NativeEvent::of("token") };
        self.index += 1;
        if let Some(sink) = self.job.sink.as_ref() {
            if !send(sink, ev) {
                self.js_gone.store(true, Ordering::Release);
            }
        }
        if push.stop {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn is_cancelled(&self) -> bool {
        self.job.flag.is_cancelled() || self.ctx.is_disposed() || self.js_gone.load(Ordering::Acquire)
    }

    fn finish(&mut self, result: paligemma::Result<GenerateOutput>) {
        let result = match (self.failure.take(), result) {
            (Some(failure), _) => Err(failure),
            (None, Ok(output)) => self.output(output),
            (None, Err(e)) => Err(NativeFailure::from_core(&e, self.ctx.is_disposed())),
        };
        self.job.finish(result);
    }
}
