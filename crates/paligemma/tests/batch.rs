//! Batched generation must give every sequence exactly what it gets alone.

mod common;

use common::*;
use paligemma::{generate, generate_batch, Control, GenerateRequest, LoadOptions, PaliGemma, SamplingParams};

#[test]
fn batched_generation_matches_single_runs() {
    for name in ["pg1-tiny-a", "pg2-tiny-a"] {
        let dir = testdata().join("reference").join(name);
        let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
        let inputs = load_tensors(&dir.join("inputs.safetensors"));
        let input_ids = ids(&inputs["input_ids"]);
        let pixels = floats(&inputs["pixel_values"]);
        // Three different images (the fixture's, mirrored, negated) and one sampled request.
        let mirrored: Vec<f32> = pixels.iter().rev().copied().collect();
        let negated: Vec<f32> = pixels.iter().map(|v| -v).collect();
        let request = |pixel_values: Vec<f32>, sampling: SamplingParams, max_new_tokens| GenerateRequest {
            input_ids: input_ids.clone(),
            pixel_values,
            max_new_tokens,
            sampling,
            stop_token_ids: vec![],
            ignore_eos: false,
            sliding_window: false,
        };
        let sampled = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let requests = vec![
            request(pixels.clone(), SamplingParams::default(), 12),
            request(mirrored, SamplingParams::default(), 5),
            request(negated, SamplingParams::default(), 12),
            request(pixels.clone(), sampled, 12),
        ];
        let batched = generate_batch(&model, &requests, &|| false).unwrap();
        for (i, r) in requests.iter().enumerate() {
            let single = generate(&model, r, &mut |_| Control::Continue, &|| false).unwrap();
            assert_eq!(batched[i].token_ids, single.token_ids, "{name}: sequence {i}");
            assert_eq!(batched[i].finish_reason, single.finish_reason, "{name}: sequence {i}");
        }
        assert_eq!(batched[0].token_ids, ids(&inputs["generated_ids"]), "{name}: reference ids");
        assert_eq!(batched[1].token_ids.len(), 5);
    }
}

#[test]
fn batched_prompts_of_different_lengths_are_rejected() {
    let dir = testdata().join("reference/pg1-tiny-a");
    let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let ids_a = ids(&inputs["input_ids"]);
    let mut ids_b = ids_a.clone();
    ids_b.insert(ids_b.len() - 1, 5);
    let px = floats(&inputs["pixel_values"]);
    let mk = |input_ids: Vec<u32>| GenerateRequest {
        input_ids,
        pixel_values: px.clone(),
        max_new_tokens: 2,
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        ignore_eos: false,
        sliding_window: false,
    };
    let err = generate_batch(&model, &[mk(ids_a), mk(ids_b)], &|| false).unwrap_err();
    assert_eq!(err.code(), paligemma::ErrorCode::InvalidArgument);
}
