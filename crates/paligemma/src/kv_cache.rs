//! Per-request key/value cache, allocated once for prompt + maximum new tokens and written in
//! place; no per-token concatenation. It belongs to the request, not to the model, so one set
//! of weights can serve many requests.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

struct LayerCache {
    k: Tensor,
    v: Tensor,
}

#[derive(Default)]
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

    /// Bytes held by the keys and values of every layer.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|c| (c.k.elem_count() + c.v.elem_count()) * c.k.dtype().size_in_bytes()).sum()
    }

    /// `[batch, kv_heads, 1, head_dim]`, the shape of one position's keys in one layer.
    pub fn slot_shape(&self) -> [usize; 4] {
        match self.layers.first().map(|c| c.k.dims()) {
            Some(&[b, k, _, h]) => [b, k, 1, h],
            _ => [0, 0, 1, 0],
        }
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

    /// Writes one token per sequence, `k, v: [B, K, 1, H]`, into the slot that `index` holds on
    /// the device (`[B, K, 1, H]` u32, every entry the slot), and returns the whole cache. Nothing
    /// here depends on the host's length, so a CUDA graph can replay it
    /// ([`crate::decode_step`]); the attention mask hides the slots not yet written.
    pub fn write_at(&self, layer: usize, k: &Tensor, v: &Tensor, index: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = &self.layers[layer];
        c.k.scatter_set(index, &k.contiguous()?, 2)?;
        c.v.scatter_set(index, &v.contiguous()?, 2)?;
        Ok((c.k.clone(), c.v.clone()))
    }

    /// The whole key and value buffers of `layer`, for a kernel that writes its slot itself
    /// ([`crate::cuda::rope_and_store`]).
    pub(crate) fn buffers(&self, layer: usize) -> (&Tensor, &Tensor) {
        let c = &self.layers[layer];
        (&c.k, &c.v)
    }

    /// Empties the cache for a new request, keeping its buffers (and so their addresses, which
    /// a captured decode step refers to). The contents are zeroed: masked slots get probability
    /// exactly 0, and 0 · (a stale value) is 0 only if the value is finite.
    pub fn reset(&mut self) -> Result<()> {
        for c in &self.layers {
            c.k.zero_set()?;
            c.v.zero_set()?;
        }
        self.len = 0;
        Ok(())
    }

    /// A cache over the first `sequences` sequences of this one: the same buffers, so what one
    /// writes the other holds (a bucket of a slot pool, [`crate::batching::slots`]).
    pub(crate) fn first_sequences(&self, sequences: usize) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|c| Ok(LayerCache { k: c.k.narrow(0, 0, sequences)?, v: c.v.narrow(0, 0, sequences)? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers, len: self.len, capacity: self.capacity })
    }

    /// Copies positions `0..len` of sequence `from_seq` of `from` (which may be this cache)
    /// into sequence `to_seq` of this one, in every layer.
    pub(crate) fn copy_sequence(&self, from: &KvCache, from_seq: usize, to_seq: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if from.layers.len() != self.layers.len() || len > self.capacity {
            return Err(Error::Internal(format!("copying {len} positions of a {}-layer cache into a {}-layer one of {}", from.layers.len(), self.layers.len(), self.capacity)));
        }
        for (src, dst) in from.layers.iter().zip(&self.layers) {
            for (s, d) in [(&src.k, &dst.k), (&src.v, &dst.v)] {
                let part = s.narrow(0, from_seq, 1)?.narrow(2, 0, len)?;
                // Through a buffer of its own: a view of `d`'s storage cannot be its source.
                let staged = Tensor::zeros(part.shape(), part.dtype(), part.device())?;
                staged.slice_set(&part.contiguous()?, 0, 0)?;
                d.narrow(0, to_seq, 1)?.slice_set(&staged, 2, 0)?;
            }
        }
        Ok(())
    }

    /// Commits `t` newly written positions.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
