//! big_vision `.npz` → HF conversion: the converted fixtures must reproduce `model.safetensors`
//! byte for byte and give the same logits; sharding, bf16, config inference, embedding padding,
//! compressed and bf16 archives, and malformed checkpoints. The reader and the VAE are tested in
//! `convert/reader.rs`.

mod common;
#[path = "convert/reader.rs"]
mod reader;
#[path = "convert/support.rs"]
mod support;

use std::path::Path;

use candle_core::Tensor;
use common::*;
use paligemma::convert::{self, ConvertOptions, NpyDtype, NpzArchive, OutputDtype};
use paligemma::{Config, Error, LoadOptions, PaliGemma};
use support::*;
use zip::CompressionMethod;

const FIXTURES: [&str; 2] = ["pg1-tiny-a", "pg2-tiny-a"];

fn logits(dir: &Path, inputs: &Path) -> Tensor {
    let model = PaliGemma::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let inputs = load_tensors(inputs);
    model.forward(&ids(&inputs["input_ids"]), &floats(&inputs["pixel_values"])).unwrap()
}

/// (max |Δ| vs the original folder's logits, max |Δ| vs the reference prefill logits).
fn logit_diffs(converted: &Path, name: &str) -> (f32, f32) {
    let inputs = fixture(name).join("inputs.safetensors");
    let got = logits(converted, &inputs);
    let original = logits(&fixture(name), &inputs);
    let expected = load_tensors(&fixture(name).join("expected.safetensors"));
    (max_abs_diff(&got, &original), max_abs_diff(&got, &expected["prefill_logits"]))
}

#[test]
fn fixtures_convert_to_identical_tensors_and_logits() {
    for name in FIXTURES {
        let out = scratch(&format!("exact-{name}"));
        let report = convert::convert_big_vision(&fixture(name).join("checkpoint.npz"), &out, &with_config(name)).unwrap();
        println!("{name}: {}", report.summary());
        assert_eq!((report.shards(), report.padded_rows, report.dtype), (1, 0, OutputDtype::F32));
        let n = assert_same_tensors(&raw_tensors(&report.files), &raw_tensors(&[fixture(name).join("model.safetensors")]), name);
        assert_eq!(n, report.tensors);
        let (vs_original, vs_reference) = logit_diffs(&out, name);
        println!("{name}: {n} tensors byte-identical; logits max|Δ| vs original {vs_original:e}, vs reference {vs_reference:e}");
        assert_eq!(vs_original, 0.0);
        assert!(vs_reference <= 1e-4);
        assert_eq!(Config::from_dir(&out).unwrap(), Config::from_dir(&fixture(name)).unwrap());
    }
}

#[test]
fn sharded_output_loads_with_identical_logits() {
    let name = "pg2-tiny-a";
    let out = scratch("sharded");
    std::fs::write(out.join("model.safetensors"), b"stale").unwrap();
    let tokenizer = fixture(name).join("meta.json");
    let opts = ConvertOptions { shard_bytes: 200_000, tokenizer: Some(tokenizer.clone()), ..with_config(name) };
    let report = convert::convert_big_vision(&fixture(name).join("checkpoint.npz"), &out, &opts).unwrap();
    println!("sharded: {}", report.summary());
    assert!(report.shards() >= 4, "{} shards", report.shards());
    assert!(!out.join("model.safetensors").exists(), "a stale single file must not survive");
    for (k, file) in report.files.iter().enumerate() {
        let expected = format!("model-{:05}-of-{:05}.safetensors", k + 1, report.shards());
        assert_eq!(file.file_name().unwrap().to_string_lossy(), expected);
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(report.bytes));
    assert_eq!(index["weight_map"].as_object().unwrap().len(), report.tensors);
    assert_eq!(report.tokenizer_files, vec![out.join("tokenizer.json")]);
    assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), std::fs::read(&tokenizer).unwrap());
    assert_same_tensors(&raw_tensors(&report.files), &raw_tensors(&[fixture(name).join("model.safetensors")]), "sharded");
    let (vs_original, _) = logit_diffs(&out, name);
    println!("sharded: {} shards, logits max|Δ| vs original {vs_original:e}", report.shards());
    assert_eq!(vs_original, 0.0);
}

#[test]
fn bf16_output_is_the_rounded_f32_checkpoint() {
    let name = "pg1-tiny-a";
    let out = scratch("bf16");
    let opts = ConvertOptions { dtype: Some(OutputDtype::BF16), ..with_config(name) };
    let report = convert::convert_big_vision(&fixture(name).join("checkpoint.npz"), &out, &opts).unwrap();
    assert_eq!(report.dtype, OutputDtype::BF16);
    let want = as_bf16(&raw_tensors(&[fixture(name).join("model.safetensors")]));
    let n = assert_same_tensors(&raw_tensors(&report.files), &want, "bf16");
    let (vs_original, _) = logit_diffs(&out, name);
    println!("bf16: {n} tensors equal to the rounded originals; logits max|Δ| vs f32 weights {vs_original:e}");
    assert!(vs_original.is_finite() && vs_original > 0.0 && vs_original < 1.0);
}

#[test]
fn inferred_config_matches_the_fixture_dimensions() {
    for name in FIXTURES {
        let out = scratch(&format!("infer-{name}"));
        let report = convert::convert_big_vision(&fixture(name).join("checkpoint.npz"), &out, &ConvertOptions::default()).unwrap();
        println!("{name} inferred: {}; warnings: {:?}", report.summary(), report.warnings);
        assert!(report.config_inferred);
        let want = Config::from_dir(&fixture(name)).unwrap();
        let got = Config::from_dir(&out).unwrap();
        assert_eq!(got, report.config);
        assert_eq!(got.architecture, want.architecture);
        assert_eq!(got.vision, want.vision);
        let (g, w) = (&got.text, &want.text);
        let dims = |t: &paligemma::TextConfig| {
            (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.vocab_size)
        };
        assert_eq!(dims(g), dims(w));
        assert_eq!((g.attention_scale, g.attn_logit_softcapping, g.sliding_window), (w.attention_scale, w.attn_logit_softcapping, w.sliding_window));
        assert_eq!(g.layer_types, w.layer_types);
        // The fixtures' `<image>` id (500) is not inferable from a 512-row embedding.
        assert!(report.warnings.iter().any(|w| w.contains("image_token_index")));
        assert_same_tensors(&raw_tensors(&report.files), &raw_tensors(&[fixture(name).join("model.safetensors")]), name);
    }
}

#[test]
fn compressed_archives_and_transposed_gating_convert_identically() {
    let name = "pg1-tiny-a";
    let dir = scratch("deflated");
    let npz = dir.join("deflated.npz");
    rewrite_npz(&fixture(name).join("checkpoint.npz"), &npz, NpyDtype::F32, CompressionMethod::Deflated, |key, shape, values| {
        if key != "llm/layers/mlp/gating_einsum" {
            return Some((shape, values));
        }
        // (L, 2, D, F) → (L, 2, F, D), the layout `_maybe_transpose_gating_einsum` accepts.
        let (l, d, f) = (shape[0], shape[2], shape[3]);
        let mut out = vec![0.0; values.len()];
        for u in 0..l * 2 {
            for i in 0..d {
                for j in 0..f {
                    out[u * d * f + j * d + i] = values[u * d * f + i * f + j];
                }
            }
        }
        Some((vec![l, 2, f, d], out))
    });
    let report = convert::convert_big_vision(&npz, &dir.join("out"), &with_config(name)).unwrap();
    let n = assert_same_tensors(&raw_tensors(&report.files), &raw_tensors(&[fixture(name).join("model.safetensors")]), "deflated");
    println!("deflated + (2,F,D) gating: {n} tensors byte-identical");
}

#[test]
fn bf16_archives_keep_bf16_by_default() {
    let name = "pg2-tiny-a";
    let dir = scratch("bf16-source");
    let npz = dir.join("bf16.npz");
    rewrite_npz(&fixture(name).join("checkpoint.npz"), &npz, NpyDtype::BF16, CompressionMethod::Stored, |_, s, v| Some((s, v)));
    let report = convert::convert_big_vision(&npz, &dir.join("out"), &with_config(name)).unwrap();
    assert_eq!(report.dtype, OutputDtype::BF16);
    let want = as_bf16(&raw_tensors(&[fixture(name).join("model.safetensors")]));
    let n = assert_same_tensors(&raw_tensors(&report.files), &want, "bf16 source");
    println!("|V2 source: {n} tensors equal to the rounded originals");
}

#[test]
fn short_embeddings_are_padded_with_their_mean_row() {
    let name = "pg1-tiny-a";
    let dir = scratch("padding");
    let npz = dir.join("short.npz");
    let rows = 500;
    rewrite_npz(&fixture(name).join("checkpoint.npz"), &npz, NpyDtype::F32, CompressionMethod::Stored, |key, shape, values| {
        if key == "llm/embedder/input_embedding" {
            Some((vec![rows, shape[1]], values[..rows * shape[1]].to_vec()))
        } else {
            Some((shape, values))
        }
    });
    let report = convert::convert_big_vision(&npz, &dir.join("out"), &with_config(name)).unwrap();
    assert_eq!(report.padded_rows, 12);
    let got = load_tensors(&report.files[0])["language_model.model.embed_tokens.weight"].clone();
    let original = load_tensors(&fixture(name).join("model.safetensors"))["language_model.model.embed_tokens.weight"].clone();
    assert_eq!(got.dims(), &[512, 64]);
    assert_eq!(max_abs_diff(&got.narrow(0, 0, rows).unwrap(), &original.narrow(0, 0, rows).unwrap()), 0.0);
    let mean = original.narrow(0, 0, rows).unwrap().mean_keepdim(0).unwrap();
    for r in rows..512 {
        assert!(max_abs_diff(&got.narrow(0, r, 1).unwrap(), &mean) < 1e-6, "row {r}");
    }
}

fn convert_err(npz: &Path, opts: &ConvertOptions) -> String {
    match convert::convert_big_vision(npz, &npz.with_extension("out"), opts) {
        Err(e @ Error::Convert(_)) => e.to_string(),
        Err(other) => panic!("expected a conversion error, got {other:?}"),
        Ok(_) => panic!("{} converted", npz.display()),
    }
}

#[test]
fn malformed_checkpoints_are_errors_naming_the_problem() {
    let name = "pg1-tiny-a";
    let dir = scratch("errors");
    let bytes = std::fs::read(fixture(name).join("checkpoint.npz")).unwrap();
    let opts = with_config(name);

    let truncated = dir.join("truncated.npz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    println!("truncated: {}", convert_err(&truncated, &opts));

    let not_zip = fixture(name).join("config.json");
    println!("not a zip: {}", convert_err(&not_zip, &opts));

    let wrong = dir.join("wrong-shape.npz");
    rewrite_npz(&fixture(name).join("checkpoint.npz"), &wrong, NpyDtype::F32, CompressionMethod::Stored, |key, shape, values| {
        if key == "llm/layers/mlp/linear" {
            Some((vec![shape[0], shape[2], shape[1]], values))
        } else {
            Some((shape, values))
        }
    });
    let msg = convert_err(&wrong, &opts);
    println!("wrong shape: {msg}");
    assert!(msg.contains("llm/layers/mlp/linear") && msg.contains("[2, 64, 128]"), "{msg}");

    let missing = dir.join("missing.npz");
    rewrite_npz(&fixture(name).join("checkpoint.npz"), &missing, NpyDtype::F32, CompressionMethod::Stored, |key, s, v| {
        (key != "llm/final_norm/scale").then_some((s, v))
    });
    let msg = convert_err(&missing, &opts);
    assert!(msg.contains("llm/final_norm/scale") && msg.contains("missing"), "{msg}");

    // Post-norms under a PaliGemma 1 config would be dropped silently: refuse instead.
    let extra = dir.join("extra.npz");
    let mut archive = NpzArchive::open(&fixture(name).join("checkpoint.npz")).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = archive
        .arrays()
        .cloned()
        .collect::<Vec<_>>()
        .into_iter()
        .map(|a| (format!("{}.npy", a.name), npy_bytes(a.dtype, &a.shape, &archive.read_f32(&a.name).unwrap())))
        .collect();
    entries.push(("params/llm/layers/post_attention_norm/scale.npy".into(), npy_bytes(NpyDtype::F32, &[2, 64], &[0.0; 128])));
    write_zip(&extra, CompressionMethod::Stored, &entries);
    let msg = convert_err(&extra, &opts);
    assert!(msg.contains("llm/layers/post_attention_norm/scale"), "{msg}");

    let short = dir.join("short-data.npz");
    let mut entry = convert::write_npy_header(NpyDtype::F32, &[1000]);
    entry.extend_from_slice(&[0u8; 8]);
    write_zip(&short, CompressionMethod::Stored, &[("params/llm/final_norm/scale.npy".into(), entry)]);
    let msg = convert_err(&short, &opts);
    println!("short data: {msg}");
    assert!(msg.contains("llm/final_norm/scale") && msg.contains("[1000]"), "{msg}");

    let fortran = dir.join("fortran.npz");
    let header = convert::write_npy_header(NpyDtype::F32, &[2]);
    let at = header.windows(5).position(|w| w == b"False").unwrap();
    let mut entry = [&header[..at], b"True ", &header[at + 5..]].concat();
    entry.extend_from_slice(&[0u8; 8]);
    write_zip(&fortran, CompressionMethod::Stored, &[("params/x.npy".into(), entry)]);
    let msg = convert_err(&fortran, &opts);
    assert!(msg.contains("Fortran") && msg.contains("params/x"), "{msg}");
}

/// Converts `PALIGEMMA_CONVERT_NPZ` into `PALIGEMMA_CONVERT_OUT` (for peak-memory runs on real or
/// synthetic multi-GB checkpoints: run the test binary under `/usr/bin/time -v`).
#[test]
#[ignore]
fn convert_external_checkpoint() {
    let (Ok(npz), Ok(out)) = (std::env::var("PALIGEMMA_CONVERT_NPZ"), std::env::var("PALIGEMMA_CONVERT_OUT")) else {
        panic!("set PALIGEMMA_CONVERT_NPZ and PALIGEMMA_CONVERT_OUT");
    };
    let dtype = std::env::var("PALIGEMMA_CONVERT_DTYPE").ok().map(|d| d.parse().unwrap());
    let start = std::time::Instant::now();
    let report = convert::convert_big_vision(Path::new(&npz), Path::new(&out), &ConvertOptions { dtype, ..Default::default() }).unwrap();
    println!("{} in {:.1}s; warnings {:?}", report.summary(), start.elapsed().as_secs_f64(), report.warnings);
}

