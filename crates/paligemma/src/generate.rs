//! The generation loop: prefill, then one decode step per token until a stop condition, with a
//! cancellation check before every step.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::PaliGemma;
use crate::sampler::{argmax, Sampler, SamplingParams};

/// A pre-tokenized generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub input_ids: Vec<u32>,
    pub pixel_values: Vec<f32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Extra ids that end generation, besides the config's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Never stop on EOS (used to reproduce fixed-length reference runs).
    pub ignore_eos: bool,
    /// Apply Gemma 2's sliding window (off by default; spec §2.5).
    pub sliding_window: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token was produced (it is not part of the output).
    Eos,
    /// `max_new_tokens` was reached.
    Length,
    /// The caller's token callback asked to stop (stop strings).
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// What the token callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Vision tower, projector and decoder over the prompt, until the first token is chosen.
    pub prefill_ms: f64,
    /// All decode steps after the first token.
    pub decode_ms: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Whether decode steps were replayed from a captured CUDA graph ([`crate::StepMode`]);
    /// false on the CPU, for requests of one or two tokens (the first steps warm up and
    /// capture), and where capture failed.
    pub decode_graph: bool,
    /// Waiting for admission in a [`crate::batching::Scheduler`] (0 for [`generate`]).
    pub queue_ms: f64,
    /// The most sequences that shared one of this request's decode steps (1 when it ran alone
    /// or only needed its prefill).
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Copies logits to the host as f32, unless the request is greedy, in which case only the
/// chosen id crosses over (one sync per token on a GPU).
pub(crate) fn choose(logits: &Tensor, sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
    if sampler.params().is_greedy() && sampler.params().repetition_penalty == 1.0 {
        if logits.device().is_cpu() {
            let greedy = |values: &[f32]| -> Result<u32> {
                check_no_nan(values)?;
                Ok(argmax(values))
            };
            // Read in place when the row is f32 (a batched step's rows are views of one buffer).
            if let Some(id) = crate::cpu::with_f32_slice(logits, greedy)? {
                return Ok(id);
            }
            return greedy(&logits.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        return Ok(logits.argmax(0)?.to_scalar::<u32>()?);
    }
    let mut values = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    check_no_nan(&values)?;
    Ok(sampler.sample(&mut values, history))
}

/// A NaN logit means the forward pass overflowed somewhere (weights or inputs out of range);
/// any token chosen from such a row would be silent garbage, so the request fails instead.
/// Costs one pass over the vocabulary per token (about 30 µs on the CPU for 257 152 values).
fn check_no_nan(values: &[f32]) -> Result<()> {
    // Vectorised test per block of 16 first; the position only when one is found.
    let (chunks, tail) = values.as_chunks::<16>();
    if !chunks.iter().any(|c| c.iter().fold(false, |any, v| any | v.is_nan())) && !tail.iter().any(|v| v.is_nan()) {
        return Ok(());
    }
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Err(Error::Internal(format!(
            "the model produced a NaN logit (token {i}): its weights or inputs overflow the \
             compute precision, so no token can be chosen"
        )));
    }
    Ok(())
}

/// Runs one request to completion. `on_token` sees every generated token (EOS excluded) and
/// may stop the loop; `is_cancelled` is polled before each step and turns into
/// [`Error::Aborted`].
pub fn generate(
    model: &PaliGemma,
    request: &GenerateRequest,
    on_token: &mut dyn FnMut(u32) -> Control,
    is_cancelled: &dyn Fn() -> bool,
) -> Result<GenerateOutput> {
    if request.max_new_tokens == 0 {
        return Err(Error::invalid("maxNewTokens", "must be at least 1"));
    }
    let mut sampler = Sampler::new(request.sampling.clone())?;
    model.check_input_ids(&request.input_ids)?;
    let capacity = request.input_ids.len() + request.max_new_tokens;
    let mut session = model.new_session(capacity)?;
    session.sliding_window = request.sliding_window;
    let eos: Vec<u32> = if request.ignore_eos { Vec::new() } else { model.config().eos_token_ids.clone() };
    let is_stop = |id: u32| eos.contains(&id) || request.stop_token_ids.contains(&id);

    if is_cancelled() {
        return Err(Error::Aborted);
    }
    let started = Instant::now();
    let mut history = request.input_ids.clone();
    let mut logits = model.prefill(&mut session, &request.input_ids, &request.pixel_values)?;
    let mut token_ids = Vec::new();
    let mut timings = Timings { prompt_tokens: request.input_ids.len(), batch_size: 1, ..Default::default() };
    let mut decode_started = None;
    let finish_reason = loop {
        let id = choose(&logits, &mut sampler, &history)?;
        if decode_started.is_none() {
            timings.prefill_ms = started.elapsed().as_secs_f64() * 1e3;
            decode_started = Some(Instant::now());
        }
        if is_stop(id) {
            break FinishReason::Eos;
        }
        token_ids.push(id);
        history.push(id);
        if on_token(id) == Control::Stop {
            break FinishReason::Stop;
        }
        if token_ids.len() >= request.max_new_tokens {
            break FinishReason::Length;
        }
        if is_cancelled() {
            return Err(Error::Aborted);
        }
        logits = model.step(&mut session, id)?;
    };
    timings.decode_ms = decode_started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
    timings.generated_tokens = token_ids.len();
    timings.decode_graph = session.graph_captured();
    Ok(GenerateOutput { token_ids, finish_reason, timings })
}

/// Generates for several requests in lockstep: one vision pass over all images, one prefill,
/// then one decode step per token for the whole batch (weights are read once per step for all
/// sequences, which is what makes batching pay on a GPU). Prompts must have equal length.
/// Sequences that finish early keep stepping with their last token; their outputs are
/// ignored. Per-token callbacks are not offered here; use [`generate`] for streaming.
pub fn generate_batch(model: &PaliGemma, requests: &[GenerateRequest], is_cancelled: &dyn Fn() -> bool) -> Result<Vec<GenerateOutput>> {
    let first = requests.first().ok_or_else(|| Error::invalid("requests", "is empty"))?;
    if requests.iter().any(|r| r.max_new_tokens == 0) {
        return Err(Error::invalid("maxNewTokens", "must be at least 1"));
    }
    let max_new = requests.iter().map(|r| r.max_new_tokens).max().unwrap_or(1);
    let mut samplers = requests.iter().map(|r| Sampler::new(r.sampling.clone())).collect::<Result<Vec<_>>>()?;
    let mut session = model.new_batch_session(requests.len(), first.input_ids.len() + max_new)?;
    session.sliding_window = first.sliding_window;
    let prompts: Vec<&[u32]> = requests.iter().map(|r| r.input_ids.as_slice()).collect();
    let images: Vec<&[f32]> = requests.iter().map(|r| r.pixel_values.as_slice()).collect();
    let eos = &model.config().eos_token_ids;

    let started = Instant::now();
    let mut logits = model.prefill_batch(&mut session, &prompts, &images)?;
    let mut outputs: Vec<Option<FinishReason>> = vec![None; requests.len()];
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    let mut histories: Vec<Vec<u32>> = requests.iter().map(|r| r.input_ids.clone()).collect();
    let mut prefill_ms = None;
    loop {
        let all_greedy = samplers.iter().all(|s| s.params().is_greedy() && s.params().repetition_penalty == 1.0);
        let chosen: Vec<u32> = if all_greedy {
            logits.argmax(1)?.to_vec1::<u32>()?
        } else {
            (0..requests.len()).map(|b| choose(&logits.get(b)?, &mut samplers[b], &histories[b])).collect::<Result<_>>()?
        };
        prefill_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
        let mut next = Vec::with_capacity(requests.len());
        for (b, &id) in chosen.iter().enumerate() {
            let r = &requests[b];
            if outputs[b].is_none() {
                if (!r.ignore_eos && eos.contains(&id)) || r.stop_token_ids.contains(&id) {
                    outputs[b] = Some(FinishReason::Eos);
                } else {
                    tokens[b].push(id);
                    histories[b].push(id);
                    if tokens[b].len() >= r.max_new_tokens {
                        outputs[b] = Some(FinishReason::Length);
                    }
                }
            }
            next.push(tokens[b].last().copied().unwrap_or(id));
        }
        if outputs.iter().all(Option::is_some) {
            break;
        }
        if is_cancelled() {
            return Err(Error::Aborted);
        }
        logits = model.step_batch(&mut session, &next)?;
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    let prefill_ms = prefill_ms.unwrap_or(total_ms);
    let decode_graph = session.graph_captured();
    Ok(tokens
        .into_iter()
        .zip(outputs)
        .zip(requests)
        .map(|((token_ids, reason), r)| GenerateOutput {
            timings: Timings {
                prefill_ms,
                decode_ms: total_ms - prefill_ms,
                prompt_tokens: r.input_ids.len(),
                generated_tokens: token_ids.len(),
                decode_graph,
                queue_ms: 0.0,
                batch_size: requests.len(),
            },
            token_ids,
            finish_reason: reason.unwrap_or(FinishReason::Length),
        })
        .collect())
}
