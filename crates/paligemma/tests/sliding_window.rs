//! Gemma 2's sliding window: off by default (full attention, as big_vision); when on, it only
//! changes anything once a generated token sits more than `window` positions past a key.

mod common;

use common::*;
use paligemma::{Config, LoadOptions, PaliGemma, Weights};

fn pg2_with_window(window: usize) -> PaliGemma {
    let dir = testdata().join("reference/pg2-tiny-a");
    let mut config = Config::from_dir(&dir).unwrap();
    config.text.sliding_window = Some(window);
    PaliGemma::from_weights(config, &Weights::open(&dir).unwrap(), &LoadOptions::default()).unwrap()
}

fn step_logits(model: &PaliGemma, sliding: bool, steps: usize) -> Vec<Vec<f32>> {
    let dir = testdata().join("reference/pg2-tiny-a");
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let (input_ids, pixels, generated) = (ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]), ids(&inputs["generated_ids"]));
    let mut session = model.new_session(input_ids.len() + steps).unwrap();
    session.sliding_window = sliding;
    let mut out = vec![floats(&model.prefill(&mut session, &input_ids, &pixels).unwrap())];
    for &id in &generated[..steps - 1] {
        out.push(floats(&model.step(&mut session, id).unwrap()));
    }
    out
}

#[test]
fn the_window_only_matters_beyond_its_span() {
    // The 24-token prompt is one bidirectional block, so even a window of 8 leaves the prefill
    // alone; generated tokens then lose the oldest keys on the sliding layers.
    let narrow = pg2_with_window(8);
    let (full, windowed) = (step_logits(&narrow, false, 6), step_logits(&narrow, true, 6));
    assert_eq!(full[0], windowed[0], "the prompt block is unaffected by the window");
    let later_diff: f32 = full[1..].iter().zip(&windowed[1..]).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs())).fold(0.0, f32::max);
    assert!(later_diff > 1e-3, "a window of 8 must change the decode steps (max diff {later_diff})");

    // With the real 4096 window nothing in this short sequence changes.
    let wide = pg2_with_window(4096);
    assert_eq!(step_logits(&wide, false, 6), step_logits(&wide, true, 6));
}
