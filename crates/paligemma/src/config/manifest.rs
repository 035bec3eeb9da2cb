//! The tensors a config implies: every canonical name with its shape. It lets a real-size
//! config be checked end to end without weights (`paligemma info`, the benchmark generator),
//! and the fixture tests prove it is exactly what the loader asks for.

use super::{Architecture, Config};

/// One expected tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn push(out: &mut Vec<TensorSpec>, name: String, shape: &[usize]) {
    out.push(TensorSpec { name, shape: shape.to_vec() });
}

impl Config {
    /// Every tensor of the checkpoint under canonical names (see `weights::canonical_name`),
    /// in a stable order: vision tower, projector, decoder.
    pub fn tensor_manifest(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let v = &self.vision;
        let (dv, fv, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
        let e = "vision_tower.embeddings";
        push(&mut out, format!("{e}.patch_embedding.weight"), &[dv, v.num_channels, p, p]);
        push(&mut out, format!("{e}.patch_embedding.bias"), &[dv]);
        push(&mut out, format!("{e}.position_embedding.weight"), &[v.num_patches(), dv]);
        for i in 0..v.num_hidden_layers {
            let l = format!("vision_tower.encoder.layers.{i}");
            for norm in ["layer_norm1", "layer_norm2"] {
                push(&mut out, format!("{l}.{norm}.weight"), &[dv]);
                push(&mut out, format!("{l}.{norm}.bias"), &[dv]);
            }
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                push(&mut out, format!("{l}.self_attn.{proj}.weight"), &[dv, dv]);
                push(&mut out, format!("{l}.self_attn.{proj}.bias"), &[dv]);
            }
            push(&mut out, format!("{l}.mlp.fc1.weight"), &[fv, dv]);
            push(&mut out, format!("{l}.mlp.fc1.bias"), &[fv]);
            push(&mut out, format!("{l}.mlp.fc2.weight"), &[dv, fv]);
            push(&mut out, format!("{l}.mlp.fc2.bias"), &[dv]);
        }
        push(&mut out, "vision_tower.post_layernorm.weight".into(), &[dv]);
        push(&mut out, "vision_tower.post_layernorm.bias".into(), &[dv]);

        let t = &self.text;
        let (d, f, h) = (t.hidden_size, t.intermediate_size, t.head_dim);
        let (qw, kvw) = (t.num_attention_heads * h, t.num_key_value_heads * h);
        push(&mut out, "multi_modal_projector.linear.weight".into(), &[d, dv]);
        push(&mut out, "multi_modal_projector.linear.bias".into(), &[d]);
        push(&mut out, "language_model.embed_tokens.weight".into(), &[t.vocab_size, d]);
        let norms: &[&str] = match self.architecture {
            Architecture::PaliGemma => &["input_layernorm", "post_attention_layernorm"],
            Architecture::PaliGemma2 => &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ],
        };
        for i in 0..t.num_hidden_layers {
            let l = format!("language_model.layers.{i}");
            push(&mut out, format!("{l}.self_attn.q_proj.weight"), &[qw, d]);
            push(&mut out, format!("{l}.self_attn.k_proj.weight"), &[kvw, d]);
            push(&mut out, format!("{l}.self_attn.v_proj.weight"), &[kvw, d]);
            push(&mut out, format!("{l}.self_attn.o_proj.weight"), &[d, qw]);
            push(&mut out, format!("{l}.mlp.gate_proj.weight"), &[f, d]);
            push(&mut out, format!("{l}.mlp.up_proj.weight"), &[f, d]);
            push(&mut out, format!("{l}.mlp.down_proj.weight"), &[d, f]);
            for norm in norms {
                push(&mut out, format!("{l}.{norm}.weight"), &[d]);
            }
        }
        push(&mut out, "language_model.norm.weight".into(), &[d]);
        out
    }

    /// Total parameter count implied by the config.
    pub fn parameter_count(&self) -> usize {
        self.tensor_manifest().iter().map(TensorSpec::numel).sum()
    }
}
