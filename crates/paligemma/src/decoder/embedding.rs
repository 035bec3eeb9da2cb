//! The token embedding, which is also the LM head (PaliGemma ties them, spec §2.3).
//!
//! On the CPU in f32 the table is held once, in the panel-major layout of the dense projections
//! ([`crate::cpu::panels`]): the LM head is the largest matrix of a decode step (21 % of its
//! bytes), and in that layout a batch's rows share each read of it. A lookup then gathers a
//! token's row from its panel, sixteen floats apart, which costs nothing beside a step.
//! With `dtype: 'bf16'` on a CPU with AVX512-BF16 the table is the same panels in bf16.
//! Elsewhere the table stays `[vocab, D]`, and the LM head is the same storage or a quantized
//! copy of it.

use candle_core::{Device, Tensor};

use crate::cpu::bf16_panels::{Bf16Panels, Bf16Stack};
use crate::cpu::panels::{self, PanelBuffer};
use crate::layers::panel_matrix;
use crate::error::{Error, Result};
use crate::layers::{Layout, Linear};
use crate::weights::Scope;

pub(super) enum TokenEmbedding {
    /// `[vocab, D]`.
    Table(Tensor),
    /// The panel-major `[D, vocab]` matrix.
    Panels { matrix: PanelBuffer, dim: usize, vocab: usize },
    /// The same panels in bf16 (`dtype: 'bf16'` on a CPU with AVX512-BF16): half the bytes
    /// of the largest matrix a decode step reads.
    Bf16 { matrix: std::sync::Arc<Bf16Panels>, dim: usize, vocab: usize },
    /// `[vocab, D]` mapped in place from a prepared quantized folder, whose LM head is stored
    /// as blocks: only lookups read it.
    Mapped { table: crate::weights::MappedF32, dim: usize, vocab: usize },
}

impl TokenEmbedding {
    /// Loads the table in the layout the LM head wants: `quantized` heads quantize the
    /// `[vocab, D]` table, unless a prepared folder stores the head already (`head_stored`), and
    /// then the table is mapped in place for the lookups.
    pub fn load(scope: &Scope, vocab: usize, dim: usize, quantized: bool, head_stored: bool) -> Result<Self> {
        let scope = scope.pp("embed_tokens");
        if quantized && head_stored && scope.device().is_cpu() && scope.dtype() == candle_core::DType::F32 {
            if let Some(table) = scope.mapped_f32(&format!("{}.weight", scope.prefix()), &[vocab, dim])? {
                return Ok(TokenEmbedding::Mapped { table, dim, vocab });
            }
        }
        let layout = Layout::for_scope(&scope, !quantized);
        if layout == Layout::Bf16Panels {
            let mut stack = Bf16Stack::new(dim, vocab);
            scope.with_raw(&[vocab, dim], "weight", |raw| stack.push(raw.bytes, raw.dtype, vocab, 1.0))?;
            return Ok(TokenEmbedding::Bf16 { matrix: std::sync::Arc::new(stack.finish()?), dim, vocab });
        }
        if layout == Layout::Panels {
            let matrix = panel_matrix(&scope, &format!("{}.panels", scope.prefix()), dim, vocab, |stack| {
                scope.with_raw(&[vocab, dim], "weight", |raw| stack.push(raw.bytes, raw.dtype, vocab, 1.0))
            })?;
            return Ok(TokenEmbedding::Panels { matrix, dim, vocab });
        }
        Ok(TokenEmbedding::Table(scope.get(&[vocab, dim], "weight")?))
    }

    /// The LM head over the same storage (quantized later by the caller if asked).
    pub fn lm_head(&self) -> Result<Linear> {
        match self {
            TokenEmbedding::Table(table) => Ok(Linear::from_parts(table.clone(), None)),
            TokenEmbedding::Panels { matrix, dim, vocab } => Ok(Linear::from_panels(matrix.clone(), *dim, *vocab)),
            TokenEmbedding::Bf16 { matrix, .. } => Ok(Linear::from_bf16_panels(matrix.clone())),
            TokenEmbedding::Mapped { .. } => Err(Error::Internal("a mapped table's LM head is the prepared folder's stored blocks".into())),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            TokenEmbedding::Table(table) => table.device(),
            TokenEmbedding::Panels { .. } | TokenEmbedding::Bf16 { .. } | TokenEmbedding::Mapped { .. } => &Device::Cpu,
        }
    }

    /// `[ids.len(), D]`: the embeddings of `ids` (u32, on the model's device), unscaled.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Table(table) => Ok(table.index_select(ids, 0)?),
            TokenEmbedding::Panels { matrix, dim, vocab } => {
                let w = matrix.as_slice();
                gather(ids, *dim, *vocab, |id, rows| rows.extend((0..*dim).map(|c| w[panels::packed_index(*dim, c, id)])))
            }
            TokenEmbedding::Bf16 { matrix, dim, vocab } => gather(ids, *dim, *vocab, |id, rows| rows.extend((0..*dim).map(|c| matrix.value(id, c)))),
            TokenEmbedding::Mapped { table, dim, vocab } => {
                let w = table.as_slice();
                gather(ids, *dim, *vocab, |id, rows| rows.extend_from_slice(&w[id * dim..(id + 1) * dim]))
            }
        }
    }
}

/// `[ids.len(), dim]` on the host, each row appended by `row(id, rows)`; ids were checked
/// against the vocabulary before they got here, so one outside it is an internal error.
fn gather(ids: &Tensor, dim: usize, vocab: usize, mut row: impl FnMut(usize, &mut Vec<f32>)) -> Result<Tensor> {
    let ids = ids.to_vec1::<u32>()?;
    let mut rows = Vec::with_capacity(ids.len() * dim);
    for &id in &ids {
        if id as usize >= vocab {
            return Err(Error::Internal(format!("token id {id} outside the vocabulary of {vocab}")));
        }
        row(id as usize, &mut rows);
    }
    Ok(Tensor::from_vec(rows, (ids.len(), dim), &Device::Cpu)?)
}
