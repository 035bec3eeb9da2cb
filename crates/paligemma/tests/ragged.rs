//! Continuous batching (issue 20): a ragged decode step and the scheduler give every sequence
//! exactly what it gets alone, bitwise, on the CPU in f32, whatever joins, leaves or shares its
//! steps.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use paligemma::batching::{BatchLimits, RowHandler, Scheduler};
use paligemma::{generate, Control, Error, FinishReason, GenerateOutput, GenerateRequest, LoadOptions, PaliGemma, Quantization, SamplingParams, StepMode};

const FIXTURES: [&str; 2] = ["pg1-tiny-a", "pg2-tiny-a"];

fn load(name: &str) -> (PaliGemma, Vec<u32>, Vec<f32>) {
    load_as(name, Mode::F32)
}

/// The CPU paths whose rows promise the same bits alone and in a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    F32,
    /// On the int8 panels (AVX-512 VNNI).
    Q8_0,
    /// On the bf16 panels (AVX512-BF16).
    Bf16,
}

fn load_as(name: &str, mode: Mode) -> (PaliGemma, Vec<u32>, Vec<f32>) {
    let dir = testdata().join("reference").join(name);
    let options = match mode {
        Mode::F32 => LoadOptions::default(),
        Mode::Q8_0 => LoadOptions { quantization: Some(Quantization::Q8_0), ..Default::default() },
        Mode::Bf16 => LoadOptions { dtype: candle_core::DType::BF16, ..Default::default() },
    };
    let model = PaliGemma::load(&dir, &options).unwrap();
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    (model, ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]))
}

/// Prompts of different lengths (text tokens inserted before the last one) and images.
fn variants(prompt: &[u32], pixels: &[f32]) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mirrored: Vec<f32> = pixels.iter().rev().copied().collect();
    let negated: Vec<f32> = pixels.iter().map(|v| -v).collect();
    let longer = |extra: &[u32]| {
        let mut ids = prompt.to_vec();
        let at = ids.len() - 1;
        ids.splice(at..at, extra.iter().copied());
        ids
    };
    vec![
        (prompt.to_vec(), pixels.to_vec()),
        (longer(&[5, 7, 9]), mirrored),
        (longer(&[11]), negated.clone()),
        (longer(&[3, 4, 5, 6, 7, 8, 9]), pixels.to_vec()),
        (prompt.to_vec(), negated),
    ]
}

/// Logits (as bits) of a prompt and then of each forced token, stepped alone with the ordinary
/// eager session.
fn solo_logits(model: &PaliGemma, prompt: &[u32], pixels: &[f32], forced: &[u32], sliding: bool) -> Vec<Vec<u32>> {
    let mut session = model.new_session(prompt.len() + forced.len() + 1).unwrap();
    session.sliding_window = sliding;
    let mut out = vec![bits(&model.prefill(&mut session, prompt, pixels).unwrap())];
    for &t in forced {
        out.push(bits(&model.step(&mut session, t).unwrap()));
    }
    out
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// Rows join at different steps, leave early and run at different positions; each row's logits
/// at each step are compared bit for bit with the same sequence stepped alone: in f32, in
/// `q8_0` where its matrices run on the int8 panels (CPUs with AVX-512 VNNI), and in bf16
/// (CPUs with AVX512-BF16; elsewhere bf16 is f32).
#[test]
fn ragged_steps_equal_solo_steps_bitwise() {
    let mut modes = vec![Mode::F32, Mode::Bf16];
    if paligemma::cpu::int8_panels::available() {
        modes.push(Mode::Q8_0);
    } else {
        eprintln!("q8_0 not checked: this CPU has no AVX-512 VNNI, so q8_0 runs on candle's kernels");
    }
    for (name, mode) in FIXTURES.iter().flat_map(|n| modes.iter().map(move |&m| (*n, m))) {
        let (model, prompt, pixels) = load_as(name, mode);
        if mode == Mode::Q8_0 {
            let report = model.quantization();
            // Matrices too narrow to quantize stay f32; none may run on candle's kernels.
            assert_eq!(report.int8_panels, report.quantized, "{name}: every quantized matrix on the int8 panels");
        }
        let name = format!("{name} {mode:?}");
        for sliding in [false, true] {
            let rows = variants(&prompt, &pixels);
            // Row i joins at step joins[i] and takes forced.len() steps; tokens are arbitrary ids.
            let joins = [0usize, 0, 2, 3, 5];
            let steps = [7usize, 3, 6, 4, 2];
            let forced: Vec<Vec<u32>> = (0..rows.len()).map(|i| (0..steps[i]).map(|s| (17 * i + 31 * s + 1) as u32 % 400).collect()).collect();
            let solo: Vec<Vec<Vec<u32>>> =
                rows.iter().zip(&forced).map(|((p, px), f)| solo_logits(&model, p, px, f, sliding)).collect();
            let mut sessions: Vec<Option<paligemma::Session>> = (0..rows.len()).map(|_| None).collect();
            let mut done = vec![0usize; rows.len()];
            for step in 0..12 {
                for (i, (p, px)) in rows.iter().enumerate() {
                    if joins[i] == step {
                        let mut s = model.new_row_session(p.len() + steps[i] + 1, sliding, true).unwrap();
                        let logits = model.prefill(&mut s, p, px).unwrap();
                        assert_eq!(bits(&logits), solo[i][0], "{name} sliding={sliding}: row {i} prefill");
                        sessions[i] = Some(s);
                    }
                }
                let active: Vec<usize> = (0..rows.len()).filter(|&i| sessions[i].is_some() && done[i] < steps[i]).collect();
                if active.is_empty() {
                    continue;
                }
                let tokens: Vec<u32> = active.iter().map(|&i| forced[i][done[i]]).collect();
                let mut refs: Vec<&mut paligemma::Session> = Vec::new();
                for (i, s) in sessions.iter_mut().enumerate() {
                    if active.contains(&i) {
                        refs.push(s.as_mut().unwrap());
                    }
                }
                let logits = model.step_rows(&mut refs, &tokens).unwrap();
                for (r, &i) in active.iter().enumerate() {
                    done[i] += 1;
                    assert_eq!(bits(&logits.get(r).unwrap()), solo[i][done[i]], "{name} sliding={sliding}: row {i}, its step {} among {} rows", done[i], active.len());
                }
            }
            assert_eq!(done, steps.to_vec());
        }
    }
}

/// What a handler saw: its tokens, and its outcome.
#[derive(Default)]
struct Seen {
    tokens: Vec<u32>,
    outcome: Option<Result<GenerateOutput, String>>,
}

struct TestRow {
    request: GenerateRequest,
    seen: Rc<RefCell<Seen>>,
    /// Stop (as a stop string would) after this many tokens.
    stop_after: Option<usize>,
    /// Cancel once this many tokens were seen.
    cancel_after: Option<usize>,
    /// Cancel as soon as the scheduler has prepared it (during its prefill).
    cancel_once_prepared: bool,
    prepared: bool,
}

impl RowHandler for TestRow {
    fn prepare(&mut self, _model: &PaliGemma) -> paligemma::Result<GenerateRequest> {
        self.prepared = true;
        Ok(self.request.clone())
    }
    fn on_token(&mut self, id: u32) -> Control {
        let mut seen = self.seen.borrow_mut();
        seen.tokens.push(id);
        if self.stop_after == Some(seen.tokens.len()) { Control::Stop } else { Control::Continue }
    }
    fn is_cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.seen.borrow().tokens.len() >= n) || (self.cancel_once_prepared && self.prepared)
    }
    fn finish(&mut self, result: paligemma::Result<GenerateOutput>) {
        let mut seen = self.seen.borrow_mut();
        assert!(seen.outcome.is_none(), "finish called twice");
        seen.outcome = Some(result.map_err(|e: Error| e.to_string()));
    }
}

fn request(prompt: Vec<u32>, pixels: Vec<f32>, max_new_tokens: usize, sampling: SamplingParams, sliding: bool) -> GenerateRequest {
    GenerateRequest { input_ids: prompt, pixel_values: pixels, max_new_tokens, sampling, stop_token_ids: vec![], ignore_eos: true, sliding_window: sliding }
}

/// The scheduler, with requests arriving at different boundaries, a batch limit below the load,
/// greedy and seeded sampling, a stop and a cancellation: every request's tokens and finish
/// reason are those of `generate` run alone.
#[test]
fn scheduler_outputs_equal_solo_generation() {
    for name in FIXTURES {
        let (model, prompt, pixels) = load(name);
        let sliding = name == "pg2-tiny-a";
        let mut requests = Vec::new();
        for (i, (p, px)) in variants(&prompt, &pixels).into_iter().enumerate() {
            let sampling = if i % 2 == 1 { SamplingParams { temperature: 0.9, top_k: 40, seed: 7 + i as u64, ..Default::default() } } else { SamplingParams::default() };
            requests.push(request(p.clone(), px.clone(), 4 + 3 * i, sampling.clone(), sliding));
            requests.push(request(p, px, 9, SamplingParams { temperature: 1.2, seed: 100 + i as u64, ..Default::default() }, sliding));
        }
        // Prefills at once, in stages of one layer (a share of 0), and in stages of a step's time;
        // rows on their own caches (the CPU's steps), and in a slot pool with a fixed-shape step
        // per bucket (a GPU's, there replayed as CUDA graphs; here kernel by kernel).
        let eager = [(1usize, None), (3, Some(0.0)), (16, None), (16, Some(0.0)), (5, Some(1.0))].map(|(b, s)| (b, s, StepMode::Eager));
        let pooled = [(2usize, None), (3, Some(0.0)), (16, None), (5, Some(1.0))].map(|(b, s)| (b, s, StepMode::FixedShapes));
        for (max_batch, prefill_stage_share, step_mode) in eager.into_iter().chain(pooled) {
            let mut scheduler = Scheduler::new(BatchLimits { max_batch, kv_cache_bytes: usize::MAX, prefill_stage_share, step_mode });
            let mut staged = false;
            let mut seen = Vec::new();
            let mut most_rows = 0;
            for (i, r) in requests.iter().enumerate() {
                let s = Rc::new(RefCell::new(Seen::default()));
                seen.push(s.clone());
                let stop_after = (i == 3).then_some(2);
                let cancel_after = (i == 4).then_some(3);
                scheduler.submit(TestRow { request: r.clone(), seen: s, stop_after, cancel_after, cancel_once_prepared: false, prepared: false });
                // Two arrivals per step boundary, so rows join a batch already running.
                if i % 2 == 1 {
                    scheduler.step(&model);
                    most_rows = most_rows.max(scheduler.running());
                    staged |= scheduler.is_admitting();
                }
            }
            while !scheduler.is_idle() {
                scheduler.step(&model);
                most_rows = most_rows.max(scheduler.running());
                staged |= scheduler.is_admitting();
            }
            assert!(most_rows <= max_batch);
            assert_eq!(scheduler.slot_pool().is_some(), step_mode != StepMode::Eager, "{name}: the rows stepped in a slot pool");
            if prefill_stage_share == Some(0.0) || max_batch == 1 {
                assert_eq!(staged, max_batch > 1, "{name}: prefills ran in stages between steps");
            }
            if prefill_stage_share.is_none() {
                assert!(!staged, "{name}: prefills ran at once");
            }
            if max_batch > 1 {
                assert!(most_rows > 1, "{name}: rows shared steps");
            }
            for (i, r) in requests.iter().enumerate() {
                let seen = seen[i].borrow();
                let mut stopped = 0;
                let alone = generate(&model, r, &mut |_| {
                    stopped += 1;
                    if i == 3 && stopped == 2 { Control::Stop } else { Control::Continue }
                }, &|| false)
                .unwrap();
                let what = format!("{name} max_batch={max_batch} share={prefill_stage_share:?} {step_mode:?} request {i}");
                match seen.outcome.as_ref().expect("finished") {
                    Ok(out) if i == 4 => panic!("{what}: a cancelled request finished: {out:?}"),
                    Err(e) if i == 4 => {
                        assert!(e.contains("aborted"), "{what}: {e}");
                        assert_eq!(seen.tokens[..], alone.token_ids[..3], "{what}: tokens before the cancel");
                    }
                    Ok(out) => {
                        assert_eq!(out.token_ids, alone.token_ids, "{what}");
                        assert_eq!(out.token_ids, seen.tokens, "{what}: streamed tokens");
                        assert_eq!(out.finish_reason, alone.finish_reason, "{what}");
                        assert!(out.timings.batch_size <= max_batch.max(1));
                    }
                    Err(e) => panic!("{what}: {e}"),
                }
                if i == 3 {
                    assert_eq!(alone.finish_reason, FinishReason::Stop);
                }
            }
        }
    }
}

/// A KV budget that holds one request's cache: requests run one after another, in order, and
/// still give their solo outputs; none is refused.
#[test]
fn kv_budget_queues_instead_of_failing() {
    let (model, prompt, pixels) = load("pg1-tiny-a");
    let one = paligemma::batching::kv_bytes(&model, prompt.len() + 6);
    let mut scheduler = Scheduler::new(BatchLimits { max_batch: 8, kv_cache_bytes: one, prefill_stage_share: Some(0.0), step_mode: StepMode::Eager });
    let mut seen = Vec::new();
    let big = request(prompt.clone(), pixels.clone(), 40, SamplingParams::default(), false);
    for r in [request(prompt.clone(), pixels.clone(), 6, SamplingParams::default(), false), big.clone(), request(prompt.clone(), pixels.clone(), 6, SamplingParams::default(), false)] {
        let s = Rc::new(RefCell::new(Seen::default()));
        seen.push(s.clone());
        scheduler.submit(TestRow { request: r, seen: s, stop_after: None, cancel_after: None, cancel_once_prepared: false, prepared: false });
    }
    let mut most_rows = 0;
    while !scheduler.is_idle() {
        scheduler.step(&model);
        most_rows = most_rows.max(scheduler.running());
        assert!(scheduler.kv_bytes() <= one.max(paligemma::batching::kv_bytes(&model, prompt.len() + 40)));
    }
    assert_eq!(most_rows, 1, "the budget holds one cache at a time");
    let alone = generate(&model, &big, &mut |_| Control::Continue, &|| false).unwrap();
    let out = seen[1].borrow();
    let Some(Ok(out)) = out.outcome.as_ref() else { panic!("the request larger than the budget ran alone") };
    assert_eq!(out.token_ids, alone.token_ids);
    assert!(seen.iter().all(|s| matches!(s.borrow().outcome, Some(Ok(_)))));
}

/// A request cancelled while its prefill runs in stages leaves without a token, frees its
/// place, and disturbs neither the running row nor the request admitted after it.
#[test]
fn a_request_cancelled_during_its_staged_prefill_leaves_cleanly() {
    let (model, prompt, pixels) = load("pg1-tiny-a");
    let mut scheduler = Scheduler::new(BatchLimits { max_batch: 4, kv_cache_bytes: usize::MAX, prefill_stage_share: Some(0.0), step_mode: StepMode::Eager });
    let long = request(prompt.clone(), pixels.clone(), 12, SamplingParams::default(), false);
    let short = request(prompt.clone(), pixels.clone(), 5, SamplingParams { temperature: 0.8, seed: 3, ..Default::default() }, false);
    let seen: Vec<Rc<RefCell<Seen>>> = (0..3).map(|_| Rc::new(RefCell::new(Seen::default()))).collect();
    let row = |r: &GenerateRequest, s: &Rc<RefCell<Seen>>, cancel: bool| TestRow { request: r.clone(), seen: s.clone(), stop_after: None, cancel_after: None, cancel_once_prepared: cancel, prepared: false };
    scheduler.submit(row(&long, &seen[0], false));
    scheduler.step(&model);
    assert_eq!(scheduler.running(), 1, "alone, the first request prefilled at once");
    scheduler.submit(row(&short, &seen[1], true));
    scheduler.submit(row(&short, &seen[2], false));
    scheduler.step(&model);
    assert!(scheduler.is_admitting(), "the second request's prefill runs in stages");
    while !scheduler.is_idle() {
        scheduler.step(&model);
    }
    let outcome = |i: usize| seen[i].borrow().outcome.clone().expect("finished");
    assert!(outcome(1).is_err_and(|e| e.contains("aborted")), "{:?}", outcome(1));
    assert!(seen[1].borrow().tokens.is_empty());
    for (i, r) in [(0, &long), (2, &short)] {
        let alone = generate(&model, r, &mut |_| Control::Continue, &|| false).unwrap();
        assert_eq!(outcome(i).unwrap().token_ids, alone.token_ids, "request {i}");
    }
}

/// The slot pool that a GPU's batches step in (CUDA graphs per bucket; here the same steps
/// kernel by kernel): a row leaving first moves the one behind it down a slot, and a longer
/// request joining later grows every slot; each request still decodes its solo tokens.
#[test]
fn a_slot_pool_compacts_and_grows_without_changing_outputs() {
    use paligemma::batching::slots::{bucket_for, BUCKETS};
    assert_eq!(BUCKETS.map(bucket_for), BUCKETS);
    assert_eq!((bucket_for(3), bucket_for(9), bucket_for(33)), (4, 16, 33));
    for name in FIXTURES {
        let (model, prompt, pixels) = load(name);
        let sliding = name == "pg2-tiny-a";
        let mirrored: Vec<f32> = pixels.iter().rev().copied().collect();
        let requests = [
            request(prompt.clone(), pixels.clone(), 3, SamplingParams::default(), sliding),
            request(prompt.clone(), mirrored.clone(), 12, SamplingParams { temperature: 0.9, seed: 5, ..Default::default() }, sliding),
            request(prompt.clone(), mirrored, 70, SamplingParams::default(), sliding),
        ];
        let mut scheduler = Scheduler::new(BatchLimits { max_batch: 3, kv_cache_bytes: usize::MAX, prefill_stage_share: None, step_mode: StepMode::FixedShapes });
        let seen: Vec<Rc<RefCell<Seen>>> = (0..3).map(|_| Rc::new(RefCell::new(Seen::default()))).collect();
        let row = |i: usize| TestRow { request: requests[i].clone(), seen: seen[i].clone(), stop_after: None, cancel_after: None, cancel_once_prepared: false, prepared: false };
        scheduler.submit(row(0));
        scheduler.submit(row(1));
        scheduler.step(&model);
        scheduler.step(&model);
        let first = scheduler.slot_pool().map(|p| (p.slots(), p.capacity())).expect("the rows step in a slot pool");
        assert_eq!(first, (4, 64), "{name}: the bucket of max_batch 3, the longest row rounded up");
        scheduler.submit(row(2));
        let mut most_rows = 0;
        while !scheduler.is_idle() {
            scheduler.step(&model);
            most_rows = most_rows.max(scheduler.running());
        }
        assert!(most_rows >= 2, "{name}: the long request shared steps");
        let pool = scheduler.slot_pool().expect("kept for later requests");
        assert!(pool.capacity() >= prompt.len() + 70 && pool.capacity() % 64 == 0, "{name}: grew to {}", pool.capacity());
        assert_eq!(pool.captured(), 0, "no graphs off CUDA");
        for (i, r) in requests.iter().enumerate() {
            let alone = generate(&model, r, &mut |_| Control::Continue, &|| false).unwrap();
            let seen = seen[i].borrow();
            let Some(Ok(out)) = seen.outcome.as_ref() else { panic!("{name} request {i}: {:?}", seen.outcome) };
            assert_eq!(out.token_ids, alone.token_ids, "{name} request {i}");
            assert_eq!(out.token_ids.len(), r.max_new_tokens);
        }
    }
}

/// A KV budget of two slots: the pool seats two rows, the other requests wait their turn, and
/// every request still decodes its solo tokens.
#[test]
fn a_slot_pool_seats_what_the_kv_budget_holds() {
    let (model, prompt, pixels) = load("pg1-tiny-a");
    assert!(prompt.len() + 10 <= 64, "every request fits one 64-position slot");
    let budget = 2 * paligemma::batching::kv_bytes(&model, 64);
    let mut scheduler = Scheduler::new(BatchLimits { max_batch: 8, kv_cache_bytes: budget, prefill_stage_share: None, step_mode: StepMode::FixedShapes });
    let requests: Vec<GenerateRequest> = (0..5).map(|i| request(prompt.clone(), pixels.clone(), 4 + i, SamplingParams::default(), false)).collect();
    let seen: Vec<Rc<RefCell<Seen>>> = (0..5).map(|_| Rc::new(RefCell::new(Seen::default()))).collect();
    for (r, s) in requests.iter().zip(&seen) {
        scheduler.submit(TestRow { request: r.clone(), seen: s.clone(), stop_after: None, cancel_after: None, cancel_once_prepared: false, prepared: false });
    }
    let mut most_rows = 0;
    while !scheduler.is_idle() {
        scheduler.step(&model);
        most_rows = most_rows.max(scheduler.running());
        assert!(scheduler.kv_bytes() <= budget, "{} bytes of KV against a budget of {budget}", scheduler.kv_bytes());
    }
    assert_eq!(most_rows, 2, "the budget seats two rows");
    assert_eq!(scheduler.slot_pool().map(|p| p.slots()), Some(2));
    for (r, s) in requests.iter().zip(&seen) {
        let alone = generate(&model, r, &mut |_| Control::Continue, &|| false).unwrap();
        let Some(Ok(out)) = s.borrow().outcome.clone() else { panic!("{:?}", s.borrow().outcome) };
        assert_eq!(out.token_ids, alone.token_ids);
    }
}
