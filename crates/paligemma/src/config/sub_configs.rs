//! `text_config` and `vision_config`, each filled with the defaults of its transformers
//! sub-config class where the hub config leaves a key out (spec §1.4, §8 P9).

use serde_json::Value;

use super::json::Obj;
use super::{limits, Architecture, LayerType, TextConfig, VisionConfig};
use crate::error::{Error, Result};

pub(super) fn parse_text(obj: Option<&Obj>, arch: Architecture) -> Result<TextConfig> {
    // Class defaults: GemmaConfig (7B sizes, never relied on by real configs) and Gemma2Config
    // (the 2B sizes, which the PaliGemma 2 3b config does rely on).
    struct Defaults {
        hidden: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        kv: usize,
        vocab: usize,
    }
    let d = match arch {
        Architecture::PaliGemma => Defaults { hidden: 3072, inter: 24576, layers: 28, heads: 16, kv: 16, vocab: 256_000 },
        Architecture::PaliGemma2 => Defaults { hidden: 2304, inter: 9216, layers: 26, heads: 8, kv: 4, vocab: 256_000 },
    };
    let empty = Obj::empty("text_config");
    let o = obj.unwrap_or(&empty);
    let hidden_size = o.uint("hidden_size")?.unwrap_or(d.hidden);
    let num_hidden_layers = o.uint("num_hidden_layers")?.unwrap_or(d.layers);
    let num_attention_heads = o.uint("num_attention_heads")?.unwrap_or(d.heads);
    let num_key_value_heads = o.uint("num_key_value_heads")?.unwrap_or(d.kv);
    let head_dim = o.uint("head_dim")?.unwrap_or(256);
    // Both spellings exist; PaliGemma configs never set them to anything but a tanh GELU, and
    // the legacy "gelu" meant tanh-GELU too (spec §8 P9).
    for key in ["hidden_activation", "hidden_act"] {
        if let Some(act) = o.string(key)? {
            if !matches!(act.as_str(), "gelu_pytorch_tanh" | "gelu" | "gelu_fast" | "gelu_new") {
                return Err(Error::config(
                    format!("text_config.{key}"),
                    format!("`{act}` is not supported; PaliGemma uses gelu_pytorch_tanh"),
                ));
            }
        }
    }
    let rope_theta = match o.float("rope_theta")? {
        Some(t) => t,
        None => match o.child("rope_parameters")? {
            Some(p) => p.float("rope_theta")?.unwrap_or(10_000.0),
            None => 10_000.0,
        },
    };
    let (attention_scale, attn_cap, final_cap, sliding_window) = match arch {
        Architecture::PaliGemma => ((head_dim as f64).powf(-0.5), None, None, None),
        Architecture::PaliGemma2 => {
            let scalar = o.float("query_pre_attn_scalar")?.unwrap_or(256.0);
            if !(scalar.is_finite() && scalar > 0.0) {
                return Err(Error::config("text_config.query_pre_attn_scalar", "must be a positive number"));
            }
            (
                scalar.powf(-0.5),
                o.nullable_float("attn_logit_softcapping", Some(50.0))?,
                o.nullable_float("final_logit_softcapping", Some(30.0))?,
                Some(o.uint("sliding_window")?.unwrap_or(4096)),
            )
        }
    };
    let layer_types = match o.get("layer_types") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some("full_attention") => Ok(LayerType::Full),
                Some("sliding_attention") => Ok(LayerType::Sliding),
                _ => Err(Error::config(
                    format!("text_config.layer_types[{i}]"),
                    format!("{item} is not `full_attention` or `sliding_attention`"),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::Null) | None => (0..num_hidden_layers.min(limits::LAYERS + 1))
            .map(|i| match arch {
                // Gemma 2: layer i slides iff (i + 1) % 2 == 1, i.e. even indices (spec §1.3).
                Architecture::PaliGemma2 if i % 2 == 0 => LayerType::Sliding,
                _ => LayerType::Full,
            })
            .collect(),
        Some(other) => {
            return Err(Error::config("text_config.layer_types", format!("expected an array, found {other}")))
        }
    };
    Ok(TextConfig {
        hidden_size,
        intermediate_size: o.uint("intermediate_size")?.unwrap_or(d.inter),
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size: o.uint("vocab_size")?.unwrap_or(d.vocab),
        rms_norm_eps: o.float("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        max_position_embeddings: o.uint("max_position_embeddings")?.unwrap_or(8192),
        attention_scale,
        attn_logit_softcapping: attn_cap,
        final_logit_softcapping: final_cap,
        sliding_window,
        layer_types,
    })
}

pub(super) fn parse_vision(obj: Option<&Obj>) -> Result<VisionConfig> {
    let empty = Obj::empty("vision_config");
    let o = obj.unwrap_or(&empty);
    if let Some(t) = o.string("model_type")? {
        if t != "siglip_vision_model" {
            return Err(Error::config(
                "vision_config.model_type",
                format!("`{t}` is not supported; expected `siglip_vision_model`"),
            ));
        }
    }
    if let Some(act) = o.string("hidden_act")? {
        if !matches!(act.as_str(), "gelu_pytorch_tanh" | "gelu_fast" | "gelu_new") {
            return Err(Error::config(
                "vision_config.hidden_act",
                format!("`{act}` is not supported; SigLIP uses gelu_pytorch_tanh"),
            ));
        }
    }
    if o.get("vision_use_head").and_then(Value::as_bool) == Some(true) {
        return Err(Error::config("vision_config.vision_use_head", "PaliGemma has no pooling head; must be false"));
    }
    // PaliGemmaConfig builds its SiglipVisionConfig with So400m sizes when none is given; a
    // given dict falls back to SiglipVisionConfig's own defaults (patch 16!) — spec §1.4.
    let (hidden, inter, layers, heads, patch) =
        if obj.is_some() { (768, 3072, 12, 12, 16) } else { (1152, 4096, 27, 16, 14) };
    Ok(VisionConfig {
        hidden_size: o.uint("hidden_size")?.unwrap_or(hidden),
        intermediate_size: o.uint("intermediate_size")?.unwrap_or(inter),
        num_hidden_layers: o.uint("num_hidden_layers")?.unwrap_or(layers),
        num_attention_heads: o.uint("num_attention_heads")?.unwrap_or(heads),
        num_channels: o.uint("num_channels")?.unwrap_or(3),
        image_size: o.uint("image_size")?.unwrap_or(224),
        patch_size: o.uint("patch_size")?.unwrap_or(patch),
        layer_norm_eps: o.float("layer_norm_eps")?.unwrap_or(1e-6),
    })
}
