//! The fixed-shape decode step (the one a CUDA graph replays) must decode what the eager step
//! decodes: positions, cache slots and masks read from the device instead of the host, and
//! attention over the whole cache with the unwritten slots masked.

mod common;

use common::*;
use paligemma::{generate, Config, Control, GenerateRequest, LoadOptions, PaliGemma, SamplingParams, StepMode, Weights};

/// Logits of the prefill and `steps − 1` decode steps, for every sequence of a batch of two
/// (the fixture's image and its mirror), fed the fixture's generated ids.
fn run(model: &PaliGemma, name: &str, mode: StepMode, sliding: bool, steps: usize) -> Vec<Vec<f32>> {
    let dir = testdata().join("reference").join(name);
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let (input_ids, pixels, generated) = (ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]), ids(&inputs["generated_ids"]));
    let mirrored: Vec<f32> = pixels.iter().rev().copied().collect();
    // Spare capacity: the masked, never-written slots must not change anything.
    let mut session = model.new_batch_session(2, input_ids.len() + steps + 5).unwrap();
    session.sliding_window = sliding;
    session.step_mode = mode;
    let mut out = vec![floats(&model.prefill_batch(&mut session, &[&input_ids, &input_ids], &[&pixels, &mirrored]).unwrap())];
    for &id in &generated[..steps - 1] {
        out.push(floats(&model.step_batch(&mut session, &[id, id]).unwrap()));
    }
    assert!(!session.graph_captured(), "no graph on the CPU");
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn argmaxes(steps: &[Vec<f32>]) -> Vec<usize> {
    steps.iter().map(|l| l.iter().enumerate().fold(0, |best, (i, &v)| if v > l[best] { i } else { best })).collect()
}

#[test]
fn fixed_shape_steps_match_eager_steps() {
    for name in ["pg1-tiny-a", "pg2-tiny-a"] {
        let model = PaliGemma::load(&testdata().join("reference").join(name), &LoadOptions::default()).unwrap();
        let eager = run(&model, name, StepMode::Eager, false, 8);
        let fixed = run(&model, name, StepMode::FixedShapes, false, 8);
        let graph_mode = run(&model, name, StepMode::Graph, false, 8);
        // Same kernels except that softmax and P·V also pass over masked slots (exact zeros),
        // which may only reorder f32 sums.
        let diff = max_diff(&eager, &fixed);
        assert!(diff < 1e-5, "{name}: fixed-shape logits differ from eager by {diff}");
        assert_eq!(argmaxes(&eager), argmaxes(&fixed), "{name}");
        assert_eq!(fixed, graph_mode, "{name}: off CUDA, graph mode is the fixed-shape step");
    }
}

#[test]
fn fixed_shape_steps_apply_the_sliding_window() {
    // A window of 8 behind a 24-token prompt: the decode steps lose keys on sliding layers.
    let dir = testdata().join("reference/pg2-tiny-a");
    let mut config = Config::from_dir(&dir).unwrap();
    config.text.sliding_window = Some(8);
    let model = PaliGemma::from_weights(config, &Weights::open(&dir).unwrap(), &LoadOptions::default()).unwrap();
    let eager = run(&model, "pg2-tiny-a", StepMode::Eager, true, 6);
    let fixed = run(&model, "pg2-tiny-a", StepMode::FixedShapes, true, 6);
    let unwindowed = run(&model, "pg2-tiny-a", StepMode::FixedShapes, false, 6);
    let diff = max_diff(&eager, &fixed);
    assert!(diff < 1e-5, "windowed fixed-shape logits differ from eager by {diff}");
    assert!(max_diff(&fixed, &unwindowed) > 1e-3, "the window must change the fixed-shape steps");
}

#[test]
fn a_full_cache_is_an_error_in_fixed_shape_mode() {
    let dir = testdata().join("reference/pg1-tiny-a");
    let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let (input_ids, pixels) = (ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]));
    let mut session = model.new_session(input_ids.len() + 1).unwrap();
    session.step_mode = StepMode::FixedShapes;
    model.prefill(&mut session, &input_ids, &pixels).unwrap();
    model.step(&mut session, 1).unwrap();
    let err = model.step(&mut session, 1).unwrap_err();
    assert_eq!(err.code().as_str(), "ERR_INVALID_ARGUMENT", "{err}");
    assert!(err.to_string().contains("maxNewTokens"), "{err}");
}

#[test]
fn a_pooled_step_decodes_a_new_request_like_a_fresh_session() {
    let name = "pg2-tiny-a";
    let dir = testdata().join("reference").join(name);
    let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let (input_ids, pixels, generated) = (ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]), ids(&inputs["generated_ids"]));
    let mirrored: Vec<f32> = pixels.iter().rev().copied().collect();
    let decode = |image: &[f32], mode: StepMode| {
        let mut session = model.new_session_with(1, input_ids.len() + 6, mode).unwrap();
        if mode != StepMode::Eager {
            assert_eq!(session.capacity() % paligemma::decode_step::CAPACITY_STEP, 0, "capacity is rounded up to share steps");
        }
        let mut out = vec![floats(&model.prefill(&mut session, &input_ids, image).unwrap())];
        for &id in &generated[..6] {
            out.push(floats(&model.step(&mut session, id).unwrap()));
        }
        out
    };
    let fresh = decode(&mirrored, StepMode::Eager);
    assert_eq!(model.pooled_decode_steps(), 0, "eager sessions keep nothing");
    decode(&pixels, StepMode::FixedShapes);
    assert_eq!(model.pooled_decode_steps(), 1, "an ended fixed-shape session leaves its step");
    // The next request takes that cache (emptied) and step; its results are a fresh session's.
    let pooled = decode(&mirrored, StepMode::FixedShapes);
    assert_eq!(model.pooled_decode_steps(), 1, "taken, then given back");
    let diff = max_diff(&fresh, &pooled);
    assert!(diff < 1e-5, "a reused step differs from a fresh eager session by {diff}");
    assert_eq!(argmaxes(&fresh), argmaxes(&pooled));
}

#[test]
fn timings_say_the_cpu_decodes_without_a_graph() {
    let dir = testdata().join("reference/pg1-tiny-a");
    let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let request = GenerateRequest {
        input_ids: ids(&inputs["input_ids"]),
        pixel_values: floats(&inputs["pixel_values"]),
        max_new_tokens: 6,
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        ignore_eos: true,
        sliding_window: false,
    };
    let out = generate(&model, &request, &mut |_| Control::Continue, &|| false).unwrap();
    assert_eq!(out.token_ids.len(), 6);
    assert!(!out.timings.decode_graph);
}
