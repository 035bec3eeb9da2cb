//! The big_vision → Hugging Face mapping (spec §5.1) as data: for each source array, the shape
//! the config implies, how its leading layer axes split it into units, the axis permutation of
//! one unit, and the HF name and shape of each unit.

use std::collections::BTreeMap;

use crate::config::{Architecture, Config};
use crate::error::{Error, Result};

/// One source array and the HF tensors it becomes.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Key without the `params/` prefix, as in spec §5.1.
    pub key: String,
    /// The full source shape.
    pub shape: Vec<usize>,
    /// Number of leading axes that enumerate units (0: the whole array is one unit).
    pub lead: usize,
    /// Axis permutation of one unit (numpy `transpose`), applied before the free reshape.
    pub perm: Vec<usize>,
    /// One output per unit, in the array's memory order.
    pub outputs: Vec<(String, Vec<usize>)>,
}

impl Job {
    pub fn unit_dims(&self) -> &[usize] {
        &self.shape[self.lead..]
    }
}

/// The embedding: copied in row chunks, then padded to the vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddingJob {
    pub key: String,
    pub rows: usize,
    pub dim: usize,
    pub vocab: usize,
}

pub(crate) const EMBEDDING: &str = "llm/embedder/input_embedding";
pub(crate) const EMBED_TOKENS: &str = "language_model.model.embed_tokens.weight";
const VISION: &str = "vision_tower.vision_model";
const ENCODER: &str = "img/Transformer/encoderblock";

/// Builds the jobs for `config` and checks every source array against the shape it implies.
/// `shapes` maps stripped keys to source shapes; every array must be used exactly once.
pub(crate) fn plan(config: &Config, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(EmbeddingJob, Vec<Job>)> {
    let embedding = embedding_job(config, shapes)?;
    let mut jobs = vision_jobs(config);
    jobs.extend(text_jobs(config, shapes));
    for job in &jobs {
        match shapes.get(&job.key) {
            None => {
                return Err(Error::Convert(format!(
                    "array `{}` (expected shape {:?}) is missing from the checkpoint",
                    job.key, job.shape
                )))
            }
            Some(found) if *found != job.shape => {
                return Err(Error::Convert(format!(
                    "array `{}` has shape {found:?}, but the config implies {:?}",
                    job.key, job.shape
                )))
            }
            Some(_) => {}
        }
    }
    let used: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).chain([EMBEDDING]).collect();
    let extra: Vec<&String> = shapes.keys().filter(|k| !used.contains(&k.as_str())).collect();
    if !extra.is_empty() {
        return Err(Error::Convert(format!(
            "arrays {extra:?} have no place in a {} model with this config; refusing to drop weights",
            config.architecture.as_str()
        )));
    }
    Ok((embedding, jobs))
}

fn embedding_job(config: &Config, shapes: &BTreeMap<String, Vec<usize>>) -> Result<EmbeddingJob> {
    let (d, vocab) = (config.text.hidden_size, config.text.vocab_size);
    let shape = shapes.get(EMBEDDING).ok_or_else(|| {
        Error::Convert(format!("array `{EMBEDDING}` (expected shape [rows ≤ {vocab}, {d}]) is missing from the checkpoint"))
    })?;
    match shape.as_slice() {
        &[rows, dim] if dim == d && rows > 0 && rows <= vocab => Ok(EmbeddingJob { key: EMBEDDING.into(), rows, dim, vocab }),
        _ => Err(Error::Convert(format!(
            "array `{EMBEDDING}` has shape {shape:?}, but the config implies [rows ≤ {vocab}, {d}] (vocab_size {vocab}, hidden_size {d})"
        ))),
    }
}

/// A whole-array job.
fn single(key: &str, shape: &[usize], perm: &[usize], name: String, out: &[usize]) -> Job {
    Job { key: key.into(), shape: shape.to_vec(), lead: 0, perm: perm.to_vec(), outputs: vec![(name, out.to_vec())] }
}

/// A job over arrays stacked along a leading layer axis: `name(i)` names layer `i`'s tensor.
fn stacked(key: &str, layers: usize, unit: &[usize], perm: &[usize], name: impl Fn(usize) -> String, out: &[usize]) -> Job {
    let mut shape = vec![layers];
    shape.extend_from_slice(unit);
    let outputs = (0..layers).map(|i| (name(i), out.to_vec())).collect();
    Job { key: key.into(), shape, lead: 1, perm: perm.to_vec(), outputs }
}

/// A job over `[L, 2, …]` arrays (k/v, gate/up): unit `[i, j]` becomes `names[j](i)`.
fn paired(key: &str, layers: usize, unit: &[usize], perm: &[usize], names: [&dyn Fn(usize) -> String; 2], out: &[usize]) -> Job {
    let mut shape = vec![layers, 2];
    shape.extend_from_slice(unit);
    let outputs = (0..layers).flat_map(|i| names.iter().map(move |n| (n(i), out.to_vec()))).collect();
    Job { key: key.into(), shape, lead: 2, perm: perm.to_vec(), outputs }
}

fn vision_jobs(config: &Config) -> Vec<Job> {
    let v = &config.vision;
    let (w, i, l, h, p) = (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size);
    let (hd, c, n) = (v.head_dim(), v.num_channels, v.num_patches());
    let d = config.text.hidden_size;
    let layer = |name: String| move |k: usize| format!("{VISION}.encoder.layers.{k}.{name}");
    let mut jobs = vec![
        single("img/embedding/kernel", &[p, p, c, w], &[3, 2, 0, 1], format!("{VISION}.embeddings.patch_embedding.weight"), &[w, c, p, p]),
        single("img/embedding/bias", &[w], &[0], format!("{VISION}.embeddings.patch_embedding.bias"), &[w]),
        single("img/pos_embedding", &[1, n, w], &[0, 1, 2], format!("{VISION}.embeddings.position_embedding.weight"), &[n, w]),
    ];
    for (bv, hf) in [("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")] {
        for (s, t) in [("scale", "weight"), ("bias", "bias")] {
            jobs.push(stacked(&format!("{ENCODER}/{bv}/{s}"), l, &[w], &[0], layer(format!("{hf}.{t}")), &[w]));
        }
    }
    let mlp = format!("{ENCODER}/MlpBlock_0");
    jobs.push(stacked(&format!("{mlp}/Dense_0/kernel"), l, &[w, i], &[1, 0], layer("mlp.fc1.weight".into()), &[i, w]));
    jobs.push(stacked(&format!("{mlp}/Dense_0/bias"), l, &[i], &[0], layer("mlp.fc1.bias".into()), &[i]));
    jobs.push(stacked(&format!("{mlp}/Dense_1/kernel"), l, &[i, w], &[1, 0], layer("mlp.fc2.weight".into()), &[w, i]));
    jobs.push(stacked(&format!("{mlp}/Dense_1/bias"), l, &[w], &[0], layer("mlp.fc2.bias".into()), &[w]));
    let attn = format!("{ENCODER}/MultiHeadDotProductAttention_0");
    for (bv, hf) in [("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")] {
        jobs.push(stacked(&format!("{attn}/{bv}/kernel"), l, &[w, h, hd], &[1, 2, 0], layer(format!("self_attn.{hf}.weight")), &[w, w]));
        jobs.push(stacked(&format!("{attn}/{bv}/bias"), l, &[h, hd], &[0, 1], layer(format!("self_attn.{hf}.bias")), &[w]));
    }
    jobs.push(stacked(&format!("{attn}/out/kernel"), l, &[h, hd, w], &[2, 0, 1], layer("self_attn.out_proj.weight".into()), &[w, w]));
    jobs.push(stacked(&format!("{attn}/out/bias"), l, &[w], &[0], layer("self_attn.out_proj.bias".into()), &[w]));
    for (s, t) in [("scale", "weight"), ("bias", "bias")] {
        jobs.push(single(&format!("img/Transformer/encoder_norm/{s}"), &[w], &[0], format!("{VISION}.post_layernorm.{t}"), &[w]));
    }
    jobs.push(single("img/head/kernel", &[w, d], &[1, 0], "multi_modal_projector.linear.weight".into(), &[d, w]));
    jobs.push(single("img/head/bias", &[d], &[0], "multi_modal_projector.linear.bias".into(), &[d]));
    jobs
}

fn text_jobs(config: &Config, shapes: &BTreeMap<String, Vec<usize>>) -> Vec<Job> {
    let t = &config.text;
    let (d, l, n, k, h, f) =
        (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.intermediate_size);
    let layer = |name: &str| {
        let name = name.to_string();
        move |i: usize| format!("language_model.model.layers.{i}.{name}")
    };
    let mut jobs = vec![
        stacked("llm/layers/attn/q_einsum/w", l, &[n, d, h], &[0, 2, 1], layer("self_attn.q_proj.weight"), &[n * h, d]),
        paired(
            "llm/layers/attn/kv_einsum/w",
            l,
            &[k, d, h],
            &[0, 2, 1],
            [&layer("self_attn.k_proj.weight"), &layer("self_attn.v_proj.weight")],
            &[k * h, d],
        ),
        stacked("llm/layers/attn/attn_vec_einsum/w", l, &[n, h, d], &[2, 0, 1], layer("self_attn.o_proj.weight"), &[d, n * h]),
    ];
    // Some checkpoints store the gating einsum as (2, F, D) ([BV-gemma]
    // `_maybe_transpose_gating_einsum`); it is unambiguous unless F == D.
    let gating = "llm/layers/mlp/gating_einsum";
    let swapped = f != d && shapes.get(gating).is_some_and(|s| *s == [l, 2, f, d]);
    let (unit, perm): (&[usize], &[usize]) = if swapped { (&[f, d], &[0, 1]) } else { (&[d, f], &[1, 0]) };
    jobs.push(paired(gating, l, unit, perm, [&layer("mlp.gate_proj.weight"), &layer("mlp.up_proj.weight")], &[f, d]));
    jobs.push(stacked("llm/layers/mlp/linear", l, &[f, d], &[1, 0], layer("mlp.down_proj.weight"), &[d, f]));
    let pre_ffw = match config.architecture {
        Architecture::PaliGemma => "post_attention_layernorm.weight",
        Architecture::PaliGemma2 => "pre_feedforward_layernorm.weight",
    };
    let mut norms = vec![("pre_attention_norm", "input_layernorm.weight"), ("pre_ffw_norm", pre_ffw)];
    if config.architecture == Architecture::PaliGemma2 {
        norms.push(("post_attention_norm", "post_attention_layernorm.weight"));
        norms.push(("post_ffw_norm", "post_feedforward_layernorm.weight"));
    }
    for (bv, hf) in norms {
        jobs.push(stacked(&format!("llm/layers/{bv}/scale"), l, &[d], &[0], layer(hf), &[d]));
    }
    jobs.push(single("llm/final_norm/scale", &[d], &[0], "language_model.model.norm.weight".into(), &[d]));
    jobs
}
