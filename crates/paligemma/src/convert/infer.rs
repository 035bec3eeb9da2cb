//! A `config.json` inferred from array shapes, for checkpoints shipped without one.
//!
//! Shapes fix every size. What they cannot tell (token ids, soft-caps, the query scale, the
//! sliding window) takes the values of the released checkpoints (spec §1.3, §1.4); a caller with
//! a non-standard model passes its own config instead.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::big_vision::EMBEDDING;
use super::transform::OutputDtype;
use crate::error::{Error, Result};

/// Rows of the released embeddings: Gemma's 256000 + 1024 `<loc>` + 128 `<seg>` tokens.
pub(crate) const RELEASED_ROWS: usize = 257_152;
/// transformers appends `<image>` (and `<pad>`) and rounds up to a multiple of 64 (spec §5.1).
pub(crate) const RELEASED_VOCAB: usize = 257_216;

/// The inferred config and the guesses a user should know about.
pub(crate) struct Inferred {
    pub json: Value,
    pub warnings: Vec<String>,
}

struct Shapes<'a>(&'a BTreeMap<String, Vec<usize>>);

impl Shapes<'_> {
    /// Shape of `key`, which must have `rank` axes.
    fn get(&self, key: &str, rank: usize) -> Result<&[usize]> {
        let shape = self.0.get(key).ok_or_else(|| {
            Error::Convert(format!("array `{key}` is missing; it is needed to infer the config (or pass a config.json)"))
        })?;
        if shape.len() != rank || shape.contains(&0) {
            return Err(Error::Convert(format!("array `{key}` has shape {shape:?}; expected {rank} non-zero axes")));
        }
        Ok(shape)
    }
}

pub(crate) fn infer_config(shapes: &BTreeMap<String, Vec<usize>>, dtype: OutputDtype) -> Result<Inferred> {
    let s = Shapes(shapes);
    let mut warnings = Vec::new();
    let vision = vision_config(&s)?;
    let emb = s.get(EMBEDDING, 2)?;
    let (rows, d) = (emb[0], emb[1]);
    let q = s.get("llm/layers/attn/q_einsum/w", 4)?;
    let (layers, heads, head_dim) = (q[0], q[1], q[3]);
    let kv_heads = s.get("llm/layers/attn/kv_einsum/w", 5)?[2];
    let ffw = s.get("llm/layers/mlp/linear", 3)?[1];
    let gemma2 = shapes.contains_key("llm/layers/post_attention_norm/scale");
    let (vocab, image_token) = if rows == RELEASED_ROWS || rows == RELEASED_VOCAB {
        (RELEASED_VOCAB, RELEASED_ROWS)
    } else {
        warnings.push(format!(
            "the embedding has {rows} rows, not the released {RELEASED_ROWS}: image_token_index cannot be inferred \
             and was set to the last row ({}); pass --config with the model's real config.json",
            rows - 1
        ));
        (rows, rows - 1)
    };
    let patches = vision["num_image_tokens"].clone();
    let mut text = json!({
        "model_type": if gemma2 { "gemma2" } else { "gemma" },
        "hidden_size": d,
        "intermediate_size": ffw,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "num_image_tokens": patches,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
    });
    if gemma2 {
        // Gemma 2 27B scales queries by (D / N)^-0.5 instead of head_dim^-0.5 (spec §1.3, §8 P11).
        let scalar = if d == 4608 && heads == 32 { d / heads } else { head_dim };
        for (k, v) in [
            ("query_pre_attn_scalar", json!(scalar)),
            ("attn_logit_softcapping", json!(50.0)),
            ("final_logit_softcapping", json!(30.0)),
            ("sliding_window", json!(4096)),
            ("cache_implementation", json!("hybrid")),
            ("eos_token_id", json!([1, 107])),
        ] {
            text[k] = v;
        }
    }
    let mut vision = vision;
    vision["projection_dim"] = json!(d);
    Ok(Inferred {
        json: json!({
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
            "image_token_index": image_token,
            "hidden_size": d,
            "projection_dim": d,
            "vocab_size": vocab,
            "tie_word_embeddings": true,
            "torch_dtype": dtype.torch_name(),
            "text_config": text,
            "vision_config": vision,
        }),
        warnings,
    })
}

fn vision_config(s: &Shapes) -> Result<Value> {
    let kernel = s.get("img/embedding/kernel", 4)?;
    let (patch, width) = (kernel[0], kernel[3]);
    if kernel[1] != patch {
        return Err(Error::Convert(format!("array `img/embedding/kernel` has non-square patches {kernel:?}")));
    }
    let positions = s.get("img/pos_embedding", 3)?[1];
    let side = (positions as f64).sqrt().round() as usize;
    if side * side != positions {
        return Err(Error::Convert(format!(
            "array `img/pos_embedding` has {positions} positions, which is not a square grid"
        )));
    }
    let layers = s.get("img/Transformer/encoderblock/LayerNorm_0/scale", 2)?[0];
    let heads = s.get("img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel", 4)?[2];
    let inter = s.get("img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel", 3)?[2];
    Ok(json!({
        "model_type": "siglip_vision_model",
        "hidden_size": width,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": kernel[2],
        "patch_size": patch,
        "image_size": side * patch,
        "num_image_tokens": positions,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": false,
    }))
}
