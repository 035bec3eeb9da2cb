//! Per-request key/value cache, allocated once for prompt + maximum new tokens and written in
//! place; no per-token concatenation. It belongs to the request, not to the model, so one set
//! of weights can serve many requests.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

struct LayerCache {
    k: Tensor,
    v: Tensor,
}

pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Allocates `[batch, kv_heads, capacity, head_dim]` keys and values per layer.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, kv_heads, capacity, head_dim);
        let layers = (0..layers)
            .map(|_| Ok(LayerCache { k: Tensor::zeros(shape, dtype, device)?, v: Tensor::zeros(shape, dtype, device)? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers, len: 0, capacity })
    }

    /// Number of positions already stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes `k, v: [B, K, T, H]` after the stored positions of `layer` and returns views of
    /// everything stored so far including them. [`KvCache::advance`] commits the new length once
    /// all layers have been written.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            return Err(Error::invalid(
                "maxNewTokens",
                format!("the sequence needs {} positions but the cache holds {}", self.len + t, self.capacity),
            ));
        }
        let c = &self.layers[layer];
        c.k.slice_set(&k.contiguous()?, 2, self.len)?;
        c.v.slice_set(&v.contiguous()?, 2, self.len)?;
        let total = self.len + t;
        Ok((c.k.narrow(2, 0, total)?, c.v.narrow(2, 0, total)?))
    }

    /// Commits `t` newly written positions.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
