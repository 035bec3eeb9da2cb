//! Prepared folders (issue 27): written from both fixture architectures, loaded in place, and
//! giving bitwise the outputs of the original folder; refused when their version, config or
//! tensors do not match, or when loaded with options they were not prepared for.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use paligemma::prepared::{self, PreparedDtype, MANIFEST};
use paligemma::weights::LoadMonitor;
use paligemma::{ErrorCode, LoadOptions, PaliGemma, Quantization};

const FIXTURES: [&str; 2] = ["pg1-tiny-a", "pg2-tiny-a"];

fn monitor() -> LoadMonitor<'static> {
    LoadMonitor { on_progress: None, is_cancelled: None }
}

/// A fresh folder under the target directory (removed first if a run left it).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prepared-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Prepares fixture `name` into a folder of the calling test's own (`tag`: tests run in
/// parallel).
fn prepare(name: &str, tag: &str) -> (PathBuf, PathBuf) {
    prepare_as(name, tag, PreparedDtype::F32)
}

fn prepare_as(name: &str, tag: &str, dtype: PreparedDtype) -> (PathBuf, PathBuf) {
    let source = testdata().join("reference").join(name);
    let out = scratch(&format!("{name}-{tag}"));
    let report = prepared::prepare(&source, &out, dtype, monitor()).unwrap();
    assert!(report.files_copied.contains(&"config.json".to_string()), "{:?}", report.files_copied);
    (source, out)
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    floats(t).into_iter().map(f32::to_bits).collect()
}

/// Prefill logits for every position, then eight greedy steps' logits.
fn outputs(model: &PaliGemma, dir: &Path) -> Vec<Vec<u32>> {
    let inputs = load_tensors(&dir.join("inputs.safetensors"));
    let (prompt, pixels) = (ids(&inputs["input_ids"]), floats(&inputs["pixel_values"]));
    let mut out = vec![bits(&model.forward(&prompt, &pixels).unwrap())];
    let mut session = model.new_session(prompt.len() + 9).unwrap();
    let mut logits = model.prefill(&mut session, &prompt, &pixels).unwrap();
    for _ in 0..8 {
        out.push(bits(&logits));
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        logits = model.step(&mut session, next).unwrap();
    }
    out
}

#[test]
fn a_prepared_folder_gives_the_original_folders_outputs_bitwise() {
    for name in FIXTURES {
        let (source, out) = prepare(name, "bitwise");
        let original = PaliGemma::load(&source, &LoadOptions::default()).unwrap();
        let loaded = PaliGemma::load(&out, &LoadOptions::default()).unwrap();
        assert_eq!(outputs(&loaded, &source), outputs(&original, &source), "{name}");
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest["version"], prepared::FORMAT_VERSION);
        assert_eq!(manifest["dtype"], "f32");
        // Documented names: the stacked q/k/v panels of the first decoder layer.
        let header = load_tensors(&out.join("model.safetensors"));
        assert!(header.contains_key("language_model.layers.0.self_attn.q_proj+k_proj+v_proj.panels"), "{:?}", header.keys().take(8).collect::<Vec<_>>());
        assert!(header.contains_key("language_model.embed_tokens.panels"));
        assert!(!header.contains_key("language_model.layers.0.self_attn.q_proj.weight"));
    }
}

#[test]
fn a_prepared_quantized_folder_gives_the_load_time_quantization_bitwise() {
    for name in FIXTURES {
        for q in [Quantization::Q8_0, Quantization::Q4K] {
            let (source, out) = prepare_as(name, q.as_str(), PreparedDtype::Quantized(q));
            let options = LoadOptions { quantization: Some(q), ..Default::default() };
            let original = PaliGemma::load(&source, &options).unwrap();
            let loaded = PaliGemma::load(&out, &options).unwrap();
            let what = format!("{name} {}", q.as_str());
            assert_eq!(outputs(&loaded, &source), outputs(&original, &source), "{what}");
            // A bf16 vision tower is made from the folder's f32 panels: the same bits too.
            let bf16_tower = || LoadOptions { quantization: Some(q), vision_bf16: Some(true), ..Default::default() };
            let (from_folder, from_source) = (PaliGemma::load(&out, &bf16_tower()).unwrap(), PaliGemma::load(&source, &bf16_tower()).unwrap());
            assert_eq!(outputs(&from_folder, &source), outputs(&from_source, &source), "{what}, bf16 vision tower");
            let (a, b) = (loaded.quantization(), original.quantization());
            assert_eq!((a.quantized, a.total), (b.quantized, b.total), "{what}: the same matrices quantized");
            // Each matrix as blocks or dense, never both; the table stays for lookups. (Only
            // widths that are multiples of the block size quantize: the tiny fixtures have
            // some of q8_0's 32, none of q4k's 256.)
            let header = load_tensors(&out.join("model.safetensors"));
            // q8_0 matrices are stored as int8 panels (`….q8_0-panels`) where their shape fits
            // them, whichever CPU prepared the folder; the rest as GGML blocks (`….q4k`).
            let stored = |k: &str| k.ends_with(&format!(".{}", q.as_str())) || k.ends_with(&format!(".{}-panels", q.as_str()));
            let stored_blocks = header.keys().filter(|k| stored(k)).count();
            assert_eq!(stored_blocks, b.quantized, "{what}: one stored matrix per quantized one");
            if q == Quantization::Q8_0 {
                assert!(header.keys().any(|k| k.ends_with(".q8_0-panels")), "{what}: int8 panels stored");
            }
            assert_eq!(b.quantized > 0, q == Quantization::Q8_0, "{what}");
            for (stacked, part) in [("mlp.gate_proj+up_proj", "mlp.gate_proj"), ("mlp.down_proj", "mlp.down_proj"), ("self_attn.o_proj", "self_attn.o_proj")] {
                let blocks = stored(&header.keys().find(|k| k.starts_with(&format!("language_model.layers.0.{stacked}."))).cloned().unwrap_or_default());
                let dense = header.contains_key(&format!("language_model.layers.0.{part}.weight"));
                assert!(blocks != dense, "{what}: {stacked} stored as blocks ({blocks}) or dense ({dense})");
            }
            assert!(header.contains_key("language_model.embed_tokens.weight"), "{what}");
            // A q8_0 folder is not an f32 one, nor a q4k one.
            for other in [None, Some(if q == Quantization::Q8_0 { Quantization::Q4K } else { Quantization::Q8_0 })] {
                let e = load_error(&out, &LoadOptions { quantization: other, ..Default::default() });
                assert_eq!(e.code(), ErrorCode::ModelLoad, "{what}");
            }
        }
    }
}

fn load_error(dir: &Path, options: &LoadOptions) -> paligemma::Error {
    match PaliGemma::load(dir, options) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn mismatched_or_damaged_folders_are_refused_naming_the_file() {
    let (source, out) = prepare("pg1-tiny-a", "refused");
    let manifest_path = out.join(MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();

    // Another format version.
    std::fs::write(&manifest_path, manifest.replace(&format!("\"version\": {}", prepared::FORMAT_VERSION), "\"version\": 99")).unwrap();
    let e = load_error(&out, &LoadOptions::default());
    assert_eq!(e.code(), ErrorCode::ModelLoad);
    assert!(e.to_string().contains(MANIFEST) && e.to_string().contains("99"), "{e}");
    std::fs::write(&manifest_path, &manifest).unwrap();

    // A config changed since (another architecture's, here).
    let config_path = out.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::copy(testdata().join("reference/pg2-tiny-a/config.json"), &config_path).unwrap();
    let e = load_error(&out, &LoadOptions::default());
    assert_eq!(e.code(), ErrorCode::ModelLoad);
    assert!(e.to_string().contains("config.json changed"), "{e}");
    std::fs::write(&config_path, &config).unwrap();

    // Options it was not prepared for.
    let e = load_error(&out, &LoadOptions { quantization: Some(Quantization::Q8_0), ..Default::default() });
    assert_eq!(e.code(), ErrorCode::ModelLoad);
    assert!(e.to_string().contains("prepared for the CPU"), "{e}");

    // A truncated weights file.
    let weights = out.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 4096]).unwrap();
    let e = load_error(&out, &LoadOptions::default());
    assert_eq!(e.code(), ErrorCode::ModelLoad);
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(&weights, &bytes).unwrap();
    PaliGemma::load(&out, &LoadOptions::default()).expect("restored, it loads again");

    // Preparing into a non-empty folder, or from a prepared one.
    assert!(prepared::prepare(&source, &out, PreparedDtype::F32, monitor()).is_err());
    assert!(prepared::prepare(&out, &scratch("again"), PreparedDtype::F32, monitor()).is_err());
    // bf16 is not prepared; the message says how to get it instead.
    let bf16 = "bf16".parse::<PreparedDtype>().expect_err("bf16 is not a prepared dtype").to_string();
    assert!(bf16.contains("with dtype 'bf16'"), "{bf16}");
    assert!("q5".parse::<PreparedDtype>().is_err());
}
