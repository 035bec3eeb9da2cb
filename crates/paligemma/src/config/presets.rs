//! Configs of every released PaliGemma size, written the way the Hub ships them (most fields
//! omitted, relying on class defaults — spec §1.4), so they exercise the same parsing path as
//! a downloaded `config.json`.

use serde_json::{json, Value};

use super::Config;
use crate::error::{Error, Result};

/// Names accepted by [`preset`]: `paligemma-3b-{224,448,896}` and
/// `paligemma2-{3b,10b,28b}-{224,448,896}`.
pub const PRESET_NAMES: &[&str] = &[
    "paligemma-3b-224",
    "paligemma-3b-448",
    "paligemma-3b-896",
    "paligemma2-3b-224",
    "paligemma2-3b-448",
    "paligemma2-3b-896",
    "paligemma2-10b-224",
    "paligemma2-10b-448",
    "paligemma2-10b-896",
    "paligemma2-28b-224",
    "paligemma2-28b-448",
    "paligemma2-28b-896",
];

fn vision(image_size: u64, projection_dim: u64) -> Value {
    let mut v = json!({
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "num_image_tokens": (image_size / 14).pow(2),
        "patch_size": 14,
        "projection_dim": projection_dim,
        "projector_hidden_act": "gelu_fast",
        "vision_use_head": false,
    });
    if image_size != 224 {
        v["image_size"] = json!(image_size);
    }
    v
}

/// The Hub-style `config.json` of a released checkpoint.
pub fn preset_json(name: &str) -> Result<Value> {
    let unknown = || Error::invalid("preset", format!("`{name}` is not one of {}", PRESET_NAMES.join(", ")));
    let (family, size, res) = {
        let parts: Vec<&str> = name.split('-').collect();
        match parts.as_slice() {
            [f, s, r] => (*f, *s, r.parse::<u64>().map_err(|_| unknown())?),
            _ => return Err(unknown()),
        }
    };
    if ![224, 448, 896].contains(&res) {
        return Err(unknown());
    }
    let tokens = (res / 14).pow(2);
    let value = match (family, size) {
        ("paligemma", "3b") => json!({
            "model_type": "paligemma",
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
            "hidden_size": 2048, "image_token_index": 257152, "projection_dim": 2048, "vocab_size": 257216,
            "text_config": {
                "model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
                "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
                "num_image_tokens": tokens, "vocab_size": 257216,
            },
            "vision_config": vision(res, 2048),
        }),
        ("paligemma2", s) => {
            let (d, f, layers, heads, kv, head_dim, scalar) = match s {
                "3b" => (2304, 9216, 26, 8, 4, 256, 256),
                "10b" => (3584, 14336, 42, 16, 8, 256, 256),
                "28b" => (4608, 36864, 46, 32, 16, 128, 144),
                _ => return Err(unknown()),
            };
            let mut value = json!({
                "model_type": "paligemma",
                "architectures": ["PaliGemmaForConditionalGeneration"],
                "_vocab_size": 257152, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                "hidden_size": 2048, "image_token_index": 257152, "projection_dim": d,
                "num_hidden_layers": layers,
                "text_config": {
                    "model_type": "gemma2", "hidden_size": d, "intermediate_size": f,
                    "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
                    "head_dim": head_dim, "query_pre_attn_scalar": scalar,
                    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                    "cache_implementation": "hybrid", "eos_token_id": [1, 107],
                    "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 4096,
                    "num_image_tokens": tokens, "vocab_size": 257216,
                },
                "vision_config": vision(res, d),
            });
            if s == "3b" {
                // The 3b Hub config relies on Gemma2Config's defaults for these.
                if let Some(text) = value["text_config"].as_object_mut() {
                    text.remove("num_attention_heads");
                    text.remove("head_dim");
                }
            }
            value
        }
        _ => return Err(unknown()),
    };
    Ok(value)
}

/// The parsed, validated config of a released checkpoint.
pub fn preset(name: &str) -> Result<Config> {
    Config::from_json(&preset_json(name)?)
}
