//! SigLIP So400m/14 vision tower (spec §2.2): patch embedding, learned positions, pre-LN encoder
//! blocks with bidirectional attention, post-layernorm. No pooling head.

use candle_core::Tensor;

use crate::attention::{attend, AttentionSpec};
use crate::config::VisionConfig;
use crate::error::Result;
use crate::layers::{gelu_tanh, LayerNorm, Layout, Linear, Projection};
use crate::weights::Scope;

/// Conv2d(3→D, kernel = stride = patch) written as one matmul over flattened patches.
struct PatchEmbedding {
    /// `[D, 3·p·p]`, the conv kernel flattened in (channel, row, col) order.
    proj: Linear,
    position: Tensor,
    patch: usize,
    grid: usize,
}

impl PatchEmbedding {
    fn load(scope: &Scope, cfg: &VisionConfig) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let conv = scope.pp("patch_embedding");
        let weight = conv.get(&[d, c, p, p], "weight")?.reshape((d, c * p * p))?;
        let bias = conv.get(&[d], "bias")?;
        let position = scope.pp("position_embedding").get(&[cfg.num_patches(), d], "weight")?;
        let proj = Linear::from_parts(weight, Some(bias));
        Ok(PatchEmbedding { proj, position, patch: p, grid: cfg.grid_size() })
    }

    /// `[B, 3, R, R]` → `[B, P, D]`, patches in row-major order (index = row·grid + col).
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = pixels.dims4()?;
        let (g, p) = (self.grid, self.patch);
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, c * p * p))?;
        Ok(self.proj.forward(&patches)?.broadcast_add(&self.position)?)
    }
}

struct EncoderLayer {
    norm1: LayerNorm,
    qkv: Linear,
    out_proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    head_dim: usize,
    spec: AttentionSpec,
}

impl EncoderLayer {
    fn load(scope: &Scope, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = scope.pp("self_attn");
        let head_dim = cfg.head_dim();
        let spec = AttentionSpec { scale: (head_dim as f64).powf(-0.5), softcap: None };
        let (f, layout) = (cfg.intermediate_size, Layout::for_scope(scope, true));
        let qkv = [
            Projection::new(attn.pp("q_proj"), d).scaled(spec.query_factor()),
            Projection::new(attn.pp("k_proj"), d),
            Projection::new(attn.pp("v_proj"), d),
        ];
        let mlp = scope.pp("mlp");
        Ok(EncoderLayer {
            norm1: LayerNorm::load(&scope.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            qkv: Linear::load_stacked(&qkv, d, true, layout)?,
            out_proj: Linear::load_stacked(&[Projection::new(attn.pp("out_proj"), d)], d, true, layout)?,
            norm2: LayerNorm::load(&scope.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
            fc1: Linear::load_stacked(&[Projection::new(mlp.pp("fc1"), f)], d, true, layout)?,
            fc2: Linear::load_stacked(&[Projection::new(mlp.pp("fc2"), d)], f, true, layout)?,
            heads: cfg.num_attention_heads,
            head_dim,
            spec,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((b, t, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = attend(&q, &k, &v, None, &self.spec)?.reshape((b, t, d))?;
        let x = (x + self.out_proj.forward(&attn)?)?;
        let y = self.fc2.forward(&gelu_tanh(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        Ok((x + y)?)
    }
}

/// The whole vision tower; its output is `last_hidden_state` (after `post_layernorm`).
pub struct VisionTower {
    embeddings: PatchEmbedding,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl VisionTower {
    pub fn load(scope: &Scope, cfg: &VisionConfig) -> Result<Self> {
        let embeddings = PatchEmbedding::load(&scope.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&scope.pp("encoder.layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = LayerNorm::load(&scope.pp("post_layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?;
        Ok(VisionTower { embeddings, layers, post_layernorm, image_size: cfg.image_size })
    }

    /// `[B, 3, R, R]` pixels in [-1, 1] → `[B, P, D_vision]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embed_patches(pixels)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x)?;
        }
        self.post_layernorm.forward(&x)
    }

    /// The tower in steps, for a prefill that runs in stages ([`crate::model::StagedPrefill`]):
    /// the patch embeddings, then [`layer`](Self::layer) for each layer in order, then
    /// [`finish`](Self::finish). Together they are [`forward`](Self::forward).
    pub fn embed_patches(&self, pixels: &Tensor) -> Result<Tensor> {
        self.embeddings.forward(pixels)
    }

    /// Encoder layer `i` on the hidden state.
    pub fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        match self.layers.get(i) {
            Some(layer) => layer.forward(x),
            None => Err(crate::error::Error::Internal(format!("vision layer {i} of {}", self.layers.len()))),
        }
    }

    /// The last layer's output through the post-norm: `last_hidden_state`.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        self.post_layernorm.forward(x)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }
}
