//! Continuous batching: many generations on one model share each decode step.
//!
//! A [`Scheduler`] holds a FIFO of waiting requests and the running rows. At every step boundary
//! ([`Scheduler::step`]) it
//! 1. drops waiting and running requests whose caller cancelled;
//! 2. admits the first waiting request if the batch has room (`max_batch` rows) and its KV cache
//!    fits the budget beside the running ones. It is prefilled alone and chooses its first
//!    token, then joins the batch. One admission per boundary bounds the stall a prefill
//!    imposes on the running rows to one prompt's prefill (admitting a burst of 16 at once would
//!    hold the first row for 16 of them). A request that does not fit waits, and so does
//!    everything behind it; one that would not fit even alone runs when nothing else does, so a
//!    budget never turns into a refusal;
//! 3. runs one ragged decode step for every running row ([`PaliGemma::step_rows`]) and hands
//!    each row its next token. Rows that finish (EOS, stop, `max_new_tokens`) leave at once and
//!    stop costing compute.
//!
//! **KV memory: one cache per request, sized exactly.** Each row owns a single-sequence cache of
//! `prompt + max_new_tokens` positions, allocated at admission and freed when the row leaves,
//! like a llama.cpp slot whose size is the request's own. Paging (vLLM) pays off when lengths are
//! unknown and memory is tight on a GPU; here every request states its length up front (the
//! image block dominates the prompt), the CPU attention kernel wants contiguous keys, and the
//! budget admits by the exact byte count, so nothing is gained from pages.
//!
//! **Batch invariance.** A row's arithmetic is that of the same sequence decoded alone (see
//! [`crate::decoder::Decoder::step_ragged`]): on the CPU in f32 its logits and tokens are
//! bitwise the same whatever else shares the batch, at any batch size: the projections' panel
//! kernel gives every output one fixed chain of multiply-adds ([`crate::cpu::panels`]).

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{choose, Control, FinishReason, GenerateOutput, GenerateRequest, Timings};
use crate::model::{PaliGemma, Session};
use crate::sampler::Sampler;

/// What the caller of one batched generation sees: it supplies the request when it is admitted
/// and receives its tokens and its outcome.
pub trait RowHandler {
    /// Called when the request reaches the front of the queue, before its prefill: returns the
    /// request (an `{ image, prompt }` request decodes its image and tokenizes its prompt
    /// here), or the error that ends it.
    fn prepare(&mut self, model: &PaliGemma) -> Result<GenerateRequest>;
    /// A new token (EOS excluded); [`Control::Stop`] ends the generation (stop strings).
    fn on_token(&mut self, id: u32) -> Control;
    /// Polled at every step boundary; a cancelled request leaves with [`Error::Aborted`].
    fn is_cancelled(&self) -> bool;
    /// The outcome, called exactly once.
    fn finish(&mut self, result: Result<GenerateOutput>);
}

/// How many rows may share a step and how much KV memory they may hold together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Rows per decode step, at least 1.
    pub max_batch: usize,
    /// Bytes of KV cache the running rows may hold together.
    pub kv_cache_bytes: usize,
}

impl BatchLimits {
    /// Defaults for a device. CPU: 16 rows, where a PaliGemma-3B step has turned compute-bound
    /// (benches/RESULTS.md, "Continuous batching"): more rows add latency, little throughput.
    /// CUDA: 1 row, so that every request keeps its captured decode graph;
    /// ragged steps on a GPU run kernel by kernel until they get graphs of their own. Both with
    /// a 4 GiB KV budget (PaliGemma-3B: 36 KB a position in f32; PaliGemma 2 3B: 213 KB).
    pub fn default_for(device: &candle_core::Device) -> BatchLimits {
        BatchLimits {
            max_batch: if device.is_cuda() { 1 } else { CPU_MAX_BATCH },
            kv_cache_bytes: 4 << 30,
        }
    }
}

/// The CPU's default `max_batch` (see [`BatchLimits::default_for`]).
pub const CPU_MAX_BATCH: usize = 16;

struct Waiting<H> {
    handler: H,
    queued_at: Instant,
    /// Prepared at an earlier boundary, then found not to fit.
    request: Option<GenerateRequest>,
}

struct Running<H> {
    handler: H,
    session: Session,
    sampler: Sampler,
    request: GenerateRequest,
    history: Vec<u32>,
    token_ids: Vec<u32>,
    /// The config's EOS ids, or none with `ignore_eos`.
    eos: Vec<u32>,
    /// Chosen but not yet fed to the model.
    next: u32,
    kv_bytes: usize,
    timings: Timings,
    decode_started: Instant,
}

/// See the module documentation.
pub struct Scheduler<H: RowHandler> {
    limits: BatchLimits,
    waiting: VecDeque<Waiting<H>>,
    running: Vec<Running<H>>,
}

impl<H: RowHandler> Scheduler<H> {
    /// An empty scheduler; `max_batch` is raised to 1 if it is 0.
    pub fn new(limits: BatchLimits) -> Self {
        let limits = BatchLimits { max_batch: limits.max_batch.max(1), ..limits };
        Scheduler { limits, waiting: VecDeque::new(), running: Vec::new() }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Queues a request behind the waiting ones.
    pub fn submit(&mut self, handler: H) {
        self.waiting.push_back(Waiting { handler, queued_at: Instant::now(), request: None });
    }

    /// Rows in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// KV bytes the running rows hold.
    pub fn kv_bytes(&self) -> usize {
        self.running.iter().map(|r| r.kv_bytes).sum()
    }

    /// One step boundary: cancellations, admissions (with their prefills), then one decode step
    /// of the running batch. Does nothing when idle.
    pub fn step(&mut self, model: &PaliGemma) {
        self.drop_cancelled();
        self.admit(model);
        self.decode(model);
    }

    /// Ends every request, waiting or running, with `error()` (a model being disposed).
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        for mut w in self.waiting.drain(..) {
            w.handler.finish(Err(error()));
        }
        for mut r in self.running.drain(..) {
            r.handler.finish(Err(error()));
        }
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|w| w.handler.is_cancelled());
        self.waiting = kept.into();
        for mut w in gone {
            w.handler.finish(Err(Error::Aborted));
        }
        let (gone, kept): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|r| r.handler.is_cancelled());
        self.running = kept;
        for mut r in gone {
            r.handler.finish(Err(Error::Aborted));
        }
    }

    fn admit(&mut self, model: &PaliGemma) {
        // Requests that end during their prefill (EOS first, an error) do not count: the next
        // one is tried at once.
        while self.running.len() < self.limits.max_batch {
            let Some(mut front) = self.waiting.pop_front() else { return };
            let request = match front.request.take() {
                Some(request) => request,
                None => match front.handler.prepare(model) {
                    Ok(request) => request,
                    Err(e) => {
                        front.handler.finish(Err(e));
                        continue;
                    }
                },
            };
            let kv_bytes = kv_bytes(model, request.input_ids.len() + request.max_new_tokens);
            let fits = self.kv_bytes().saturating_add(kv_bytes) <= self.limits.kv_cache_bytes;
            if !fits && !self.running.is_empty() {
                // FIFO: it waits at the front, prepared, until enough rows have left.
                front.request = Some(request);
                self.waiting.push_front(front);
                return;
            }
            let queue_ms = front.queued_at.elapsed().as_secs_f64() * 1e3;
            let ragged = self.limits.max_batch > 1;
            match start_row(model, front.handler, request, kv_bytes, queue_ms, ragged) {
                Some(row) => {
                    self.running.push(row);
                    return;
                }
                None => continue,
            }
        }
    }

    fn decode(&mut self, model: &PaliGemma) {
        if self.running.is_empty() {
            return;
        }
        let rows = self.running.len();
        let tokens: Vec<u32> = self.running.iter().map(|r| r.next).collect();
        let stepped = match self.running.as_mut_slice() {
            // A row alone steps as `generate` does (replaying its CUDA graph on a GPU); on the
            // CPU that is the same arithmetic as a ragged step of one row.
            [only] => model.step(&mut only.session, only.next).and_then(|l| Ok(l.unsqueeze(0)?)),
            running => {
                let mut sessions: Vec<&mut Session> = running.iter_mut().map(|r| &mut r.session).collect();
                model.step_rows(&mut sessions, &tokens)
            }
        };
        let logits = match stepped {
            Ok(logits) => logits,
            Err(e) => {
                // A failed step leaves every cache in doubt: the whole batch ends with it.
                let message = e.to_string();
                let code = e.code();
                for mut row in self.running.drain(..) {
                    row.handler.finish(Err(same_kind(code, &message)));
                }
                return;
            }
        };
        let mut kept = Vec::with_capacity(rows);
        for (i, mut row) in self.running.drain(..).enumerate() {
            row.timings.batch_size = row.timings.batch_size.max(rows);
            let chosen = logits.get(i).map_err(Error::from).and_then(|l| choose(&l, &mut row.sampler, &row.history));
            match chosen {
                Ok(id) => match row.accept(id) {
                    Some(reason) => row.end(reason),
                    None => kept.push(row),
                },
                Err(e) => row.handler.finish(Err(e)),
            }
        }
        self.running = kept;
    }
}

/// Prefills a request alone and chooses its first token; `None` when it already ended.
fn start_row<H: RowHandler>(model: &PaliGemma, mut handler: H, request: GenerateRequest, kv_bytes: usize, queue_ms: f64, ragged: bool) -> Option<Running<H>> {
    let started = Instant::now();
    let prefilled = (|| {
        if request.max_new_tokens == 0 {
            return Err(Error::invalid("maxNewTokens", "must be at least 1"));
        }
        let sampler = Sampler::new(request.sampling.clone())?;
        model.check_input_ids(&request.input_ids)?;
        let mut session = model.new_row_session(request.input_ids.len() + request.max_new_tokens, request.sliding_window, ragged)?;
        let logits = model.prefill(&mut session, &request.input_ids, &request.pixel_values)?;
        Ok((session, sampler, logits))
    })();
    let (session, mut sampler, logits) = match prefilled {
        Ok(p) => p,
        Err(e) => {
            handler.finish(Err(e));
            return None;
        }
    };
    let history = request.input_ids.clone();
    let first = choose(&logits, &mut sampler, &history);
    let timings = Timings {
        prefill_ms: started.elapsed().as_secs_f64() * 1e3,
        prompt_tokens: request.input_ids.len(),
        queue_ms,
        batch_size: 1,
        ..Default::default()
    };
    let eos = if request.ignore_eos { Vec::new() } else { model.config().eos_token_ids.clone() };
    let mut row = Running { handler, session, sampler, request, history, token_ids: Vec::new(), eos, next: 0, kv_bytes, timings, decode_started: Instant::now() };
    match first {
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
    }
}

impl<H: RowHandler> Running<H> {
    /// Takes a chosen token the way [`crate::generate`] does: EOS (or a stop id) ends the row
    /// without being emitted; otherwise the token is emitted, and the row ends on a stop from
    /// the handler or at `max_new_tokens`. `None`: it goes on with `id` as its next input.
    fn accept(&mut self, id: u32) -> Option<FinishReason> {
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

    fn end(mut self, reason: FinishReason) {
        let mut timings = std::mem::take(&mut self.timings);
        timings.decode_ms = self.decode_started.elapsed().as_secs_f64() * 1e3;
        timings.generated_tokens = self.token_ids.len();
        timings.decode_graph = self.session.graph_captured();
        let output = GenerateOutput { token_ids: std::mem::take(&mut self.token_ids), finish_reason: reason, timings };
        // The cache is freed before the caller hears of the end.
        drop(self.session);
        self.handler.finish(Ok(output));
    }
}

/// Bytes of a single-sequence KV cache of `positions` positions.
pub fn kv_bytes(model: &PaliGemma, positions: usize) -> usize {
    let t = &model.config().text;
    let per_position = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * model.dtype().size_in_bytes();
    per_position.saturating_mul(positions)
}

/// An error of the same code as one that ended a whole step, for each of its rows.
fn same_kind(code: crate::error::ErrorCode, message: &str) -> Error {
    match code {
        crate::error::ErrorCode::InvalidArgument => Error::invalid("batch", message),
        crate::error::ErrorCode::Aborted => Error::Aborted,
        _ => Error::Internal(message.to_string()),
    }
}
