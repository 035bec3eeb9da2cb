//! Numerical parity with the transformers reference (float32, eager) for every reference
//! folder: vision features, projector output, prefill logits at every position, the logits of
//! every greedy step, the greedy ids, and name normalisation via `alt-names/`.

mod common;

use std::path::Path;

use candle_core::Tensor;
use common::*;
use paligemma::{generate, Control, GenerateRequest, LoadOptions, PaliGemma, SamplingParams, Weights};

const TOL: f32 = 1e-4;

struct Outcome {
    line: String,
    ok: bool,
}

fn check_folder(dir: &Path) -> Outcome {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let model = PaliGemma::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: load failed: {e}"));
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let expected = load_tensors(&dir.join("expected.safetensors"));
    let input_ids = ids(&inputs["input_ids"]);
    let pixel_values = floats(&inputs["pixel_values"]);
    let generated = ids(&inputs["generated_ids"]);

    let pixels = model.pixel_tensor(&pixel_values).unwrap();
    let vision = model.vision_features(&pixels).unwrap();
    let vision_diff = max_abs_diff(&vision, &expected["vision_last_hidden"]);
    let projected = model.image_features(&pixels).unwrap();
    let projector_diff = max_abs_diff(&projected, &expected["image_features_projected"]);

    let logits = model.forward(&input_ids, &pixel_values).unwrap();
    let prefill_diff = max_abs_diff(&logits, &expected["prefill_logits"]);

    // Teacher-forced steps: row k is the distribution that chose generated token k.
    let step_rows = expected["generation_step_logits"].dim(0).unwrap();
    let mut session = model.new_session(input_ids.len() + step_rows).unwrap();
    let mut step_logits = vec![model.prefill(&mut session, &input_ids, &pixel_values).unwrap()];
    for &id in &generated[..step_rows - 1] {
        step_logits.push(model.step(&mut session, id).unwrap());
    }
    let steps = Tensor::stack(&step_logits, 0).unwrap();
    let steps_diff = max_abs_diff(&steps, &expected["generation_step_logits"]);

    let request = GenerateRequest {
        input_ids: input_ids.clone(),
        pixel_values: pixel_values.clone(),
        max_new_tokens: generated.len(),
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        ignore_eos: true, // the reference was forced to run every step
        sliding_window: false,
    };
    let out = generate(&model, &request, &mut |_| Control::Continue, &|| false).unwrap();
    let ids_match = out.token_ids == generated;

    // The same weights under transformers 5.x in-memory names must give identical logits.
    let alt = dir.join("alt-names/model.safetensors");
    let alt_diff = if alt.exists() {
        let weights = Weights::open_files(&[alt]).unwrap();
        let alt_model = PaliGemma::from_weights(model.config().clone(), &weights, &LoadOptions::default()).unwrap();
        Some(max_abs_diff(&alt_model.forward(&input_ids, &pixel_values).unwrap(), &logits))
    } else {
        None
    };

    let ok = vision_diff <= TOL
        && projector_diff <= TOL
        && prefill_diff <= TOL
        && steps_diff <= TOL
        && ids_match
        && alt_diff.is_none_or(|d| d == 0.0);
    let line = format!(
        "parity {name}: vision={vision_diff:.3e} prefill={prefill_diff:.3e} steps={steps_diff:.3e} ids={} (projector={projector_diff:.3e} alt-names={})",
        if ids_match { "match" } else { "MISMATCH" },
        alt_diff.map_or("absent".to_string(), |d| format!("{d:.1e}")),
    );
    if !ids_match {
        eprintln!("  {name}: expected {generated:?}\n  {name}: got      {:?}", out.token_ids);
    }
    Outcome { line, ok }
}

#[test]
fn parity_with_reference() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in reference_dirs() {
        if !dir.join("model.safetensors").exists() {
            println!("parity {}: skipped (no model.safetensors)", dir.display());
            continue;
        }
        let outcome = check_folder(&dir);
        println!("{}", outcome.line);
        checked += 1;
        if !outcome.ok {
            failures.push(outcome.line);
        }
    }
    assert!(checked > 0, "no reference folder had a model to check");
    assert!(failures.is_empty(), "parity failures (tolerance {TOL}):\n{}", failures.join("\n"));
}

/// Generation's prefill narrows the last decoder layer to the last position (on the CPU); its
/// logits must be those of the full forward pass at that position, to f32 rounding (the one
/// row goes through other matmul kernels). The keys and values that prefill leaves in the cache
/// are checked by `parity_with_reference`'s teacher-forced steps.
#[test]
fn prefill_narrowed_to_the_last_position_matches_the_full_pass() {
    let mut checked = 0;
    for dir in reference_dirs() {
        if !dir.join("model.safetensors").exists() {
            continue;
        }
        let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
        let inputs = load_tensors(&dir.join("inputs.safetensors"));
        let input_ids = ids(&inputs["input_ids"]);
        let pixel_values = floats(&inputs["pixel_values"]);
        let full = model.forward(&input_ids, &pixel_values).unwrap();
        let last_row = full.get(input_ids.len() - 1).unwrap();
        let mut session = model.new_session(input_ids.len() + 1).unwrap();
        let prefill = model.prefill(&mut session, &input_ids, &pixel_values).unwrap();
        let diff = max_abs_diff(&prefill, &last_row);
        assert!(diff <= 2e-5, "{}: prefill vs full pass at the last position: {diff:.3e}", dir.display());
        checked += 1;
    }
    assert!(checked > 0, "no reference folder had a model to check");
}
