//! A request's life in the batch: admission (its prefill, at once or in stages), its tokens,
//! and its end.

use std::time::Instant;

use super::{Admitting, RowHandler, Running};
use crate::error::{Error, Result};
use crate::generate::{choose, Control, FinishReason, GenerateOutput, GenerateRequest, Timings};
use crate::model::PaliGemma;
use crate::sampler::Sampler;

/// The positions a request's cache needs: its prompt and every token it may generate.
pub(super) fn positions(request: &GenerateRequest) -> usize {
    request.input_ids.len() + request.max_new_tokens
}

/// Checks a request and starts its prefill (the image's patch embeddings); `None` when it
/// already ended (its handler has heard why).
pub(super) fn begin_row<H: RowHandler>(model: &PaliGemma, mut handler: H, request: GenerateRequest, kv_bytes: usize, queue_ms: f64, ragged: bool) -> Option<Box<Admitting<H>>> {
    let started = Instant::now();
    let begun = (|| -> Result<_> {
        if request.max_new_tokens == 0 {
            return Err(Error::invalid("maxNewTokens", "must be at least 1"));
        }
        let sampler = Sampler::new(request.sampling.clone())?;
        model.check_input_ids(&request.input_ids)?;
        let mut session = model.new_row_session(positions(&request), request.sliding_window, ragged)?;
        let staged = model.begin_prefill(&mut session, &request.input_ids, &request.pixel_values)?;
        Ok((session, staged, sampler))
    })();
    match begun {
        Ok((session, staged, sampler)) => Some(Box::new(Admitting { handler, request, session, staged, sampler, kv_bytes, queue_ms, started })),
        Err(e) => {
            handler.finish(Err(e));
            None
        }
    }
}

/// Runs a stage of an admission's prefill (layers while `more()` allows); when its prefill is
/// complete, chooses its first token and returns the running row (`Ok(None)`: the request
/// already ended, and its handler has heard why). `Err`: layers remain.
pub(super) fn finish_row<H: RowHandler>(model: &PaliGemma, mut admitting: Box<Admitting<H>>, more: &mut dyn FnMut() -> bool) -> std::result::Result<Option<Running<H>>, Box<Admitting<H>>> {
    let done = match model.advance_prefill(&admitting.session, &mut admitting.staged, more) {
        Ok(done) => done,
        Err(e) => {
            admitting.handler.finish(Err(e));
            return Ok(None);
        }
    };
    if !done {
        return Err(admitting);
    }
    let Admitting { mut handler, request, mut session, staged, mut sampler, kv_bytes, queue_ms, started } = *admitting;
    let logits = match model.finish_prefill(&mut session, staged) {
        Ok(logits) => logits,
        Err(e) => {
            handler.finish(Err(e));
            return Ok(None);
        }
    };
    let history = request.input_ids.clone();
    let first = choose(&logits, &mut sampler, &history);
    let timings = Timings {
        // From admission to the first token: with stages, the running rows' steps between them
        // are included, since the request waited for them too.
        prefill_ms: started.elapsed().as_secs_f64() * 1e3,
        prompt_tokens: request.input_ids.len(),
        queue_ms,
        batch_size: 1,
        ..Default::default()
    };
    let eos = if request.ignore_eos { Vec::new() } else { model.config().eos_token_ids.clone() };
    let mut row = Running { handler, session, sampler, request, history, token_ids: Vec::new(), eos, next: 0, kv_bytes, timings, decode_started: Instant::now(), slot: None, graph_replayed: false };
    Ok(match first {
        Ok(id) => match row.accept(id) {
            Some(reason) => {
                row.end(reason);
                None
            }
            None => Some(row),
        },
        Err(e) => {
            row.handler.finish(Err(e));
            None
        }
    })
}

impl<H: RowHandler> Running<H> {
    /// Takes a chosen token the way [`crate::generate`] does: EOS (or a stop id) ends the row
    /// without being emitted; otherwise the token is emitted, and the row ends on a stop from
    /// the handler or at `max_new_tokens`. `None`: it goes on with `id` as its next input.
    pub(super) fn accept(&mut self, id: u32) -> Option<FinishReason> {
        if self.eos.contains(&id) || self.request.stop_token_ids.contains(&id) {
            return Some(FinishReason::Eos);
        }
        self.token_ids.push(id);
        self.history.push(id);
        if self.handler.on_token(id) == Control::Stop {
            return Some(FinishReason::Stop);
        }
        if self.token_ids.len() >= self.request.max_new_tokens {
            return Some(FinishReason::Length);
        }
        self.next = id;
        None
    }

    pub(super) fn end(mut self, reason: FinishReason) {
        let mut timings = std::mem::take(&mut self.timings);
        timings.decode_ms = self.decode_started.elapsed().as_secs_f64() * 1e3;
        timings.generated_tokens = self.token_ids.len();
        timings.decode_graph = self.session.graph_captured() || self.graph_replayed;
        let output = GenerateOutput { token_ids: std::mem::take(&mut self.token_ids), finish_reason: reason, timings };
        // The cache is freed before the caller hears of the end.
        drop(self.session);
        self.handler.finish(Ok(output));
    }
}
