//! `config.json` → a typed, validated model description.
//!
//! Hub configs serialise only what differs from the transformers class defaults, so every
//! missing key is filled with the default of its *sub-config* class (spec §1.4, §8 P9). Both the
//! 4.x shape (`rope_theta`) and the 5.x shape (`rope_parameters.rope_theta`) are accepted.
//! Nothing downstream hard-codes a size or a token id: it all comes from here.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

mod json;
pub mod manifest;
pub mod presets;
mod sub_configs;

use json::{to_u32, Obj};
use sub_configs::{parse_text, parse_vision};

pub use manifest::TensorSpec;
pub use presets::{preset, preset_json, PRESET_NAMES};

/// Which decoder family the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// PaliGemma (v1): Gemma decoder.
    PaliGemma,
    /// PaliGemma 2: Gemma 2 decoder (post-norms, soft-capping, sliding-window layers).
    PaliGemma2,
}

impl Architecture {
    /// The name used in the public API.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::PaliGemma => "paligemma",
            Architecture::PaliGemma2 => "paligemma2",
        }
    }
}

/// Attention span of one decoder layer (Gemma 2 alternates them, spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    Sliding,
}

/// SigLIP vision tower hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of the square image.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Number of image tokens `P = (image_size / patch_size)²`.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Gemma / Gemma 2 decoder hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// Multiplier applied to `q·kᵀ`: `head_dim^-0.5` (Gemma) or `query_pre_attn_scalar^-0.5`
    /// (Gemma 2; 144 for the 28b model, spec §8 P11).
    pub attention_scale: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: Option<usize>,
    pub layer_types: Vec<LayerType>,
}

/// A complete PaliGemma configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: Architecture,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Id of the `<image>` placeholder token (257152 in real checkpoints).
    pub image_token_id: u32,
    pub bos_token_id: u32,
    pub pad_token_id: u32,
    /// Generation stops on any of these (PaliGemma 2 lists `[1, 107]`).
    pub eos_token_ids: Vec<u32>,
}

/// Upper bounds that reject absurd configs before anything is allocated. They are far above
/// every released checkpoint (the largest, 28b, has 46 layers and D = 4608).
mod limits {
    pub const LAYERS: usize = 512;
    pub const WIDTH: usize = 65_536;
    pub const HEADS: usize = 1_024;
    pub const VOCAB: usize = 4_194_304;
    pub const IMAGE_SIZE: usize = 4_096;
    pub const POSITIONS: usize = 1 << 20;
}

impl Config {
    /// Reads and validates `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = crate::files::read_text_capped(&path, crate::files::MAX_CONFIG_BYTES)?;
        Self::from_json_str(&text)
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config("config.json", format!("not valid JSON: {e}")))?;
        Self::from_json(&value)
    }

    /// Parses and validates a config from a JSON value.
    pub fn from_json(value: &Value) -> Result<Self> {
        let root = Obj::root(value)?;
        let model_type = root.string("model_type")?;
        match model_type.as_deref() {
            Some("paligemma") => {}
            Some(other) => {
                return Err(Error::config(
                    "model_type",
                    format!("`{other}` is not supported; expected `paligemma`"),
                ))
            }
            None => return Err(Error::config("model_type", "missing; expected `paligemma`")),
        }

        let text_obj = root.child("text_config")?;
        let text_type = match &text_obj {
            Some(t) => t.string("model_type")?.unwrap_or_else(|| "gemma".to_string()),
            None => "gemma".to_string(),
        };
        let architecture = match text_type.as_str() {
            "gemma" => Architecture::PaliGemma,
            "gemma2" => Architecture::PaliGemma2,
            other => {
                return Err(Error::config(
                    "text_config.model_type",
                    format!("`{other}` is not supported; expected `gemma` or `gemma2`"),
                ))
            }
        };
        let text = parse_text(text_obj.as_ref(), architecture)?;
        let vision_obj = root.child("vision_config")?;
        let vision = parse_vision(vision_obj.as_ref())?;

        let image_token_id = root.uint("image_token_index")?.unwrap_or(256_000);
        let bos_token_id = root.uint("bos_token_id")?.unwrap_or(2);
        let pad_token_id = root.uint("pad_token_id")?.unwrap_or(0);
        let mut eos_token_ids = root.token_ids("eos_token_id")?.unwrap_or_else(|| vec![1]);
        if let Some(t) = &text_obj {
            for id in t.token_ids("eos_token_id")?.unwrap_or_default() {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }

        let config = Config {
            architecture,
            vision,
            text,
            image_token_id: to_u32("image_token_index", image_token_id)?,
            bos_token_id: to_u32("bos_token_id", bos_token_id)?,
            pad_token_id: to_u32("pad_token_id", pad_token_id)?,
            eos_token_ids,
        };
        config.validate()?;
        Ok(config)
    }

    /// Number of `<image>` tokens one image expands to.
    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }

    /// Checks every dimension for consistency, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let bounded = |field: &str, value: usize, max: usize| -> Result<()> {
            if value == 0 {
                return Err(Error::config(field, "must be positive"));
            }
            if value > max {
                return Err(Error::config(field, format!("{value} exceeds the supported maximum {max}")));
            }
            Ok(())
        };
        bounded("vision_config.hidden_size", v.hidden_size, limits::WIDTH)?;
        bounded("vision_config.intermediate_size", v.intermediate_size, 4 * limits::WIDTH)?;
        bounded("vision_config.num_hidden_layers", v.num_hidden_layers, limits::LAYERS)?;
        bounded("vision_config.num_attention_heads", v.num_attention_heads, limits::HEADS)?;
        bounded("vision_config.image_size", v.image_size, limits::IMAGE_SIZE)?;
        bounded("vision_config.patch_size", v.patch_size, v.image_size.max(1))?;
        if v.num_channels != 3 {
            return Err(Error::config("vision_config.num_channels", format!("{} is not supported; PaliGemma takes RGB (3)", v.num_channels)));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(Error::config(
                "vision_config.num_attention_heads",
                format!("{} does not divide hidden_size {}", v.num_attention_heads, v.hidden_size),
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(Error::config(
                "vision_config.patch_size",
                format!("{} does not divide image_size {}", v.patch_size, v.image_size),
            ));
        }
        bounded("text_config.hidden_size", t.hidden_size, limits::WIDTH)?;
        bounded("text_config.intermediate_size", t.intermediate_size, 8 * limits::WIDTH)?;
        bounded("text_config.num_hidden_layers", t.num_hidden_layers, limits::LAYERS)?;
        bounded("text_config.num_attention_heads", t.num_attention_heads, limits::HEADS)?;
        bounded("text_config.num_key_value_heads", t.num_key_value_heads, limits::HEADS)?;
        bounded("text_config.head_dim", t.head_dim, limits::WIDTH)?;
        bounded("text_config.vocab_size", t.vocab_size, limits::VOCAB)?;
        bounded("text_config.max_position_embeddings", t.max_position_embeddings, limits::POSITIONS)?;
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(Error::config(
                "text_config.num_key_value_heads",
                format!("{} does not divide num_attention_heads {}", t.num_key_value_heads, t.num_attention_heads),
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return Err(Error::config("text_config.head_dim", format!("{} must be even for rotary embeddings", t.head_dim)));
        }
        if t.layer_types.len() != t.num_hidden_layers {
            return Err(Error::config(
                "text_config.layer_types",
                format!("has {} entries for {} layers", t.layer_types.len(), t.num_hidden_layers),
            ));
        }
        if !(t.rms_norm_eps.is_finite() && t.rms_norm_eps > 0.0) {
            return Err(Error::config("text_config.rms_norm_eps", "must be a positive number"));
        }
        if !(v.layer_norm_eps.is_finite() && v.layer_norm_eps > 0.0) {
            return Err(Error::config("vision_config.layer_norm_eps", "must be a positive number"));
        }
        if !(t.rope_theta.is_finite() && t.rope_theta > 1.0) {
            return Err(Error::config("text_config.rope_theta", "must be a number greater than 1"));
        }
        for (field, cap) in [
            ("text_config.attn_logit_softcapping", t.attn_logit_softcapping),
            ("text_config.final_logit_softcapping", t.final_logit_softcapping),
        ] {
            if let Some(c) = cap {
                if !(c.is_finite() && c > 0.0) {
                    return Err(Error::config(field, "must be a positive number or null"));
                }
            }
        }
        if self.num_image_tokens() >= t.max_position_embeddings {
            return Err(Error::config(
                "text_config.max_position_embeddings",
                format!(
                    "{} leaves no room after {} image tokens",
                    t.max_position_embeddings,
                    self.num_image_tokens()
                ),
            ));
        }
        for (field, id) in [("bos_token_id", self.bos_token_id), ("pad_token_id", self.pad_token_id)] {
            if id as usize >= t.vocab_size {
                return Err(Error::config(field, format!("{id} is outside the vocabulary of {}", t.vocab_size)));
            }
        }
        for &id in &self.eos_token_ids {
            if id as usize >= t.vocab_size {
                return Err(Error::config("eos_token_id", format!("{id} is outside the vocabulary of {}", t.vocab_size)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
