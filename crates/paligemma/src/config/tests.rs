use serde_json::json;

use super::*;

fn fixture_config(name: &str) -> Config {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference").join(name);
    Config::from_dir(&dir).unwrap()
}

fn field_of(err: Error) -> String {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn hub_style_paligemma1_config_fills_class_defaults() {
    let c = preset("paligemma-3b-224").unwrap();
    assert_eq!(c.architecture, Architecture::PaliGemma);
    assert_eq!(c.num_image_tokens(), 256);
    assert_eq!(c.image_token_id, 257152);
    assert_eq!((c.text.hidden_size, c.text.num_key_value_heads, c.text.head_dim), (2048, 1, 256));
    assert_eq!(c.text.rope_theta, 10_000.0);
    assert_eq!(c.text.rms_norm_eps, 1e-6);
    assert_eq!(c.text.max_position_embeddings, 8192);
    assert_eq!(c.text.attention_scale, 1.0 / 16.0);
    assert_eq!(c.text.attn_logit_softcapping, None);
    assert!(c.text.layer_types.iter().all(|t| *t == LayerType::Full));
    assert_eq!(c.eos_token_ids, vec![1]);
    assert_eq!((c.vision.image_size, c.vision.patch_size, c.vision.layer_norm_eps), (224, 14, 1e-6));
}

#[test]
fn hub_style_paligemma2_config_uses_gemma2_defaults() {
    let c = preset("paligemma2-3b-448").unwrap();
    assert_eq!(c.architecture, Architecture::PaliGemma2);
    // num_attention_heads and head_dim are omitted on the Hub and come from Gemma2Config.
    assert_eq!((c.text.num_attention_heads, c.text.head_dim), (8, 256));
    assert_eq!(c.text.hidden_size, 2304, "the stale top-level hidden_size 2048 must be ignored");
    assert_eq!(c.num_image_tokens(), 1024);
    assert_eq!(c.text.attn_logit_softcapping, Some(50.0));
    assert_eq!(c.text.final_logit_softcapping, Some(30.0));
    assert_eq!(c.text.sliding_window, Some(4096));
    assert_eq!(c.text.layer_types[0], LayerType::Sliding);
    assert_eq!(c.text.layer_types[1], LayerType::Full);
    assert_eq!(c.eos_token_ids, vec![1, 107]);
}

#[test]
fn the_28b_query_scale_is_144_not_head_dim() {
    let c = preset("paligemma2-28b-224").unwrap();
    assert_eq!(c.text.head_dim, 128);
    assert!((c.text.attention_scale - 1.0 / 12.0).abs() < 1e-12);
}

#[test]
fn transformers5_config_reads_rope_parameters() {
    let c = fixture_config("pg1-tiny-a");
    assert_eq!(c.text.rope_theta, 10_000.0);
    assert_eq!(c.image_token_id, 500);
    assert_eq!(c.num_image_tokens(), 16);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference/pg1-tiny-a/config.json")).unwrap()).unwrap();
    v["text_config"]["rope_parameters"]["rope_theta"] = json!(5000.0);
    assert_eq!(Config::from_json(&v).unwrap().text.rope_theta, 5000.0);
    v["text_config"]["rope_theta"] = json!(20000.0);
    assert_eq!(Config::from_json(&v).unwrap().text.rope_theta, 20000.0, "an explicit rope_theta wins");
    let c2 = fixture_config("pg2-tiny-a");
    assert_eq!(c2.text.layer_types, vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding]);
    assert_eq!(c2.text.attention_scale, 24f64.powf(-0.5));
}

#[test]
fn every_released_size_builds_with_consistent_shapes() {
    for name in PRESET_NAMES {
        let c = preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let manifest = c.tensor_manifest();
        let t = &c.text;
        assert!(manifest.iter().all(|s| s.numel() > 0), "{name}: empty tensor");
        assert_eq!(t.num_attention_heads % t.num_key_value_heads, 0, "{name}");
        let embed = manifest.iter().find(|s| s.name == "language_model.embed_tokens.weight").unwrap();
        assert_eq!(embed.shape, vec![257216, t.hidden_size], "{name}");
    }
}

#[test]
fn parameter_counts_match_the_published_sizes() {
    // spec performance notes §0: PaliGemma-3B has 2.923 B parameters (SigLIP 412.4 M,
    // projector 2.4 M, Gemma 2.509 B).
    let c = preset("paligemma-3b-224").unwrap();
    let billions = c.parameter_count() as f64 / 1e9;
    assert!((billions - 2.923).abs() < 0.001, "PaliGemma-3B-224 has {billions} B parameters");
    let vision: usize = c.tensor_manifest().iter().filter(|s| s.name.starts_with("vision_tower")).map(|s| s.numel()).sum();
    assert!((vision as f64 / 1e6 - 412.4).abs() < 0.1, "SigLIP has {vision} parameters");
    let pg2 = preset("paligemma2-3b-224").unwrap().parameter_count() as f64 / 1e9;
    assert!((pg2 - 3.03).abs() < 0.01, "PaliGemma 2 3B has {pg2} B parameters");
}

#[test]
fn manifest_is_exactly_what_the_fixture_checkpoints_hold() {
    for name in ["pg1-tiny-a", "pg2-tiny-a"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference").join(name);
        let weights = crate::weights::Weights::open(&dir).unwrap();
        let config = Config::from_dir(&dir).unwrap();
        let manifest = config.tensor_manifest();
        assert_eq!(manifest.len(), weights.names().count(), "{name}: tensor count");
        for spec in manifest {
            assert_eq!(weights.shape_of(&spec.name), Some(spec.shape.as_slice()), "{name}: {}", spec.name);
        }
    }
}

#[test]
fn unknown_or_missing_model_type_is_rejected() {
    assert_eq!(field_of(Config::from_json(&json!({"model_type": "llava"})).unwrap_err()), "model_type");
    assert_eq!(field_of(Config::from_json(&json!({})).unwrap_err()), "model_type");
    let err = Config::from_json(&json!({"model_type": "paligemma", "text_config": {"model_type": "llama"}})).unwrap_err();
    assert_eq!(field_of(err), "text_config.model_type");
    let err = Config::from_json(&json!({"model_type": "paligemma", "vision_config": {"model_type": "clip"}})).unwrap_err();
    assert_eq!(field_of(err), "vision_config.model_type");
}

fn with(path: &[&str], value: serde_json::Value) -> Result<Config> {
    let mut v = preset_json("paligemma2-3b-224").unwrap();
    let mut cursor = &mut v;
    for key in &path[..path.len() - 1] {
        cursor = &mut cursor[*key];
    }
    cursor[path[path.len() - 1]] = value;
    Config::from_json(&v)
}

#[test]
fn inconsistent_dimensions_name_the_field() {
    let cases: &[(&[&str], serde_json::Value, &str)] = &[
        (&["text_config", "num_key_value_heads"], json!(3), "text_config.num_key_value_heads"),
        (&["vision_config", "num_attention_heads"], json!(7), "vision_config.num_attention_heads"),
        (&["vision_config", "patch_size"], json!(15), "vision_config.patch_size"),
        (&["text_config", "head_dim"], json!(255), "text_config.head_dim"),
        (&["text_config", "layer_types"], json!(["full_attention"]), "text_config.layer_types"),
        (&["text_config", "layer_types"], json!(["sideways"]), "text_config.layer_types[0]"),
        (&["text_config", "hidden_size"], json!(0), "text_config.hidden_size"),
        (&["text_config", "vocab_size"], json!(2), "bos_token_id"),
        (&["text_config", "vocab_size"], json!(100), "eos_token_id"),
        (&["text_config", "max_position_embeddings"], json!(256), "text_config.max_position_embeddings"),
        (&["text_config", "hidden_activation"], json!("relu"), "text_config.hidden_activation"),
        (&["vision_config", "num_channels"], json!(4), "vision_config.num_channels"),
        (&["text_config", "query_pre_attn_scalar"], json!(-1), "text_config.query_pre_attn_scalar"),
    ];
    for (path, value, field) in cases {
        let err = with(path, value.clone()).expect_err(&format!("{path:?} = {value} must be rejected"));
        assert_eq!(field_of(err), *field, "{path:?} = {value}");
    }
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    assert_eq!(field_of(with(&["text_config", "num_hidden_layers"], json!(1_000_000_000u64)).unwrap_err()), "text_config.num_hidden_layers");
    assert_eq!(field_of(with(&["text_config", "vocab_size"], json!(1_000_000_000_000u64)).unwrap_err()), "text_config.vocab_size");
    assert_eq!(field_of(with(&["vision_config", "image_size"], json!(1_000_000)).unwrap_err()), "vision_config.image_size");
}

#[test]
fn wrong_json_types_name_the_field() {
    assert_eq!(field_of(with(&["text_config", "hidden_size"], json!("big")).unwrap_err()), "text_config.hidden_size");
    assert_eq!(field_of(with(&["text_config", "rms_norm_eps"], json!([1])).unwrap_err()), "text_config.rms_norm_eps");
    assert_eq!(field_of(with(&["text_config"], json!(5)).unwrap_err()), "text_config");
    assert_eq!(field_of(with(&["eos_token_id"], json!("one")).unwrap_err()), "eos_token_id");
    assert_eq!(field_of(with(&["text_config", "num_hidden_layers"], json!(-3)).unwrap_err()), "text_config.num_hidden_layers");
    assert_eq!(field_of(Config::from_json_str("{not json").unwrap_err()), "config.json");
    assert_eq!(field_of(Config::from_json_str("[1, 2]").unwrap_err()), "config.json");
}

#[test]
fn a_null_softcap_turns_it_off() {
    let c = with(&["text_config", "attn_logit_softcapping"], serde_json::Value::Null).unwrap();
    assert_eq!(c.text.attn_logit_softcapping, None);
}

#[test]
fn missing_config_file_is_an_io_error_naming_the_path() {
    let err = Config::from_dir(std::path::Path::new("/nonexistent/model")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model/config.json"), "{err}");
    assert_eq!(err.code(), crate::ErrorCode::ModelLoad);
}
