//! Dense projections in bf16 on CPUs with AVX512-BF16 (`dtype: 'bf16'` on the CPU), in a
//! panel-major layout of our own, for every row count: the prompt's hundreds of rows, a
//! continuous batch's decode step, one decoded token.
//!
//! Why: `vdpbf16ps` does two multiply-adds per f32 lane, twice the rate of an f32 FMA (456 against
//! 226 GFLOP/s on the bench host, benches/RESULTS.md), and bf16 weights are half the bytes f32
//! ones are, which is what bounds decode. candle has no CPU bf16 matmul worth the name, so the
//! kernel is ours, on the layout of [`super::int8_panels`]: panels of 16 outputs, each
//! contiguous over the whole depth, inputs in pairs (`[n/16][k/2][16][2]`, the last panel and
//! pair zero-padded). A register block holds up to 6 rows × 4 panels of f32 sums.
//!
//! The arithmetic: activations are rounded to bf16 (to nearest even, subnormals to zero, as
//! `vcvtne2ps2bf16` does), each output lane then takes one `vdpbf16ps` per input pair in order,
//! starting from zero. Register blocking, chunking (an f32 stored and reloaded is exact), the
//! thread count and the row count never change any output's chain, so a row's bits are the same
//! alone or in a batch, as [`super::panels`] promises for f32. The portable path replays the
//! instruction's documented order (the odd product, then the even one, each added with one
//! rounding; the products of two bf16 are exact in f32) and the tests check it against the
//! hardware bit for bit.

use rayon::prelude::*;

use super::tiling;
use crate::error::{Error, Result};

mod kernels;
#[cfg(test)]
mod tests;

/// Output columns per panel: one AVX-512 register of f32 sums.
pub const PANEL: usize = 16;
/// Input pairs per chunk (128 inputs): a chunk of a register block's panels is at most
/// 4 × 4 KiB, which stays in L1 while every row block reads it.
const PAIRS_PER_CHUNK: usize = 64;
/// Most panels per parallel task (enough work to amortise its scheduling).
const PANELS_PER_TASK: usize = 8;

/// 64 bytes on a cache line: one input pair of one panel, `[16 columns][2 inputs]` bf16.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u16; 2 * PANEL]);

/// Whether this CPU runs the kernel: AVX-512 with BF16, not turned off by
/// `PALIGEMMA_NO_AVX512=1` (which stands in for an older CPU, [`super::panels::Isa::detect`]).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::panels::Isa::detect() == super::panels::Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `v` rounded to bf16 the way `vcvtne2ps2bf16` rounds: to nearest even, subnormals to zero,
/// NaN kept quiet. Written without branches so that it vectorises.
#[inline(always)]
pub fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let flushed = if bits & 0x7f80_0000 == 0 { bits & 0x8000_0000 } else { bits };
    let rounded = (flushed.wrapping_add(0x7fff + ((flushed >> 16) & 1)) >> 16) as u16;
    if v.is_nan() { ((bits >> 16) as u16) | 0x40 } else { rounded }
}

/// The f32 that a bf16 stands for (exact).
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// A `[n, k]` matrix (rows are the outputs) in bf16 panels: `[n/16][k/2][16 columns][2]`.
pub struct Bf16Panels {
    lines: Vec<Line>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for Bf16Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Panels[{}, {}]", self.n, self.k)
    }
}

impl Bf16Panels {
    fn pairs(k: usize) -> usize {
        k.div_ceil(2)
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (2 per weight, plus the padding of the last panel and pair).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// Weight `(j, c)` (output `j`, input `c`) as f32: a token's row when the matrix is the
    /// tied embedding.
    pub fn value(&self, j: usize, c: usize) -> f32 {
        let line = &self.lines[(j / PANEL) * Self::pairs(self.k) + c / 2];
        bf16_value(line.0[(j % PANEL) * 2 + c % 2])
    }

    /// `[n, k]` row-major f32 (tests and benches; the loader uses [`Bf16Stack`]).
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Result<Bf16Panels> {
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut stack = Bf16Stack::new(k, n);
        stack.push(&bytes, candle_core::DType::F32, n, 1.0)?;
        stack.finish()
    }

    /// The bf16 panels of an f32 panel-major `[k, n]` matrix ([`super::panels`], a prepared
    /// folder's): each value rounded as [`Bf16Stack`] rounds the checkpoint's, so a matrix is
    /// the same whichever way it was loaded.
    pub fn from_f32_panels(w: &[f32], k: usize, n: usize) -> Result<Bf16Panels> {
        if w.len() != super::panels::packed_len(k, n) {
            return Err(Error::Internal(format!("bf16 panels: {} f32 panel values for a [{k}, {n}] matrix", w.len())));
        }
        let pairs = Self::pairs(k);
        let mut lines = super::huge_pages::zeroed_in_parallel(n.div_ceil(PANEL) * pairs, Line([0; 2 * PANEL]));
        if k > 0 {
            lines.par_chunks_mut(pairs).zip(w.par_chunks(k * PANEL)).for_each(|(out, panel)| {
                for (c, lanes) in panel.chunks_exact(PANEL).enumerate() {
                    let line = &mut out[c / 2].0;
                    for (col, v) in lanes.iter().enumerate() {
                        line[col * 2 + c % 2] = bf16_bits(*v);
                    }
                }
            });
        }
        Ok(Bf16Panels { lines, n, k })
    }

    /// `y = x · Wᵀ` for `x: [m, k]` row-major f32; `y: [m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, available())
    }

    /// [`Bf16Panels::matmul`] with the AVX512-BF16 kernels or the portable ones: the same bits,
    /// which the tests check.
    pub(crate) fn matmul_with(&self, x: &[f32], m: usize, native: bool) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert!(x.len() >= m * k, "bf16 panel matmul: {} inputs for {m} rows of {k}", x.len());
        let panels = n.div_ceil(PANEL);
        let padded = panels * PANEL;
        let mut y = vec![0f32; m * padded];
        if m == 0 || n == 0 {
            return Vec::new();
        }
        let pairs = Self::pairs(k);
        let blocks = tiling::RowBlocks::new(m, &kernels::PANELS_FOR_ROWS);
        let rows = Bf16Rows::new(&x[..m * k], m, k, &blocks);
        let out = tiling::Output::new(&mut y);
        tiling::for_each_part(panels, PANELS_PER_TASK, &blocks, pairs.div_ceil(PAIRS_PER_CHUNK), |part| {
            let c0 = part.chunk * PAIRS_PER_CHUNK;
            // SAFETY: `for_each_part` gives this part's outputs (rows r0.., the columns of its
            // panels, inside `y`, which outlives the call) to this call alone.
            unsafe { kernels::block(native, &part, c0..(c0 + PAIRS_PER_CHUNK).min(pairs), &rows, self, out.ptr(), padded) };
        });
        if padded != n {
            y = y.chunks_exact(padded).flat_map(|row| &row[..n]).copied().collect();
        }
        y
    }
}

/// Activation rows rounded to bf16 ([`bf16_bits`]), as pairs: 32-bit words holding inputs `2c`
/// (low half) and `2c + 1` (high half), the last one zero-padded. Each register block's rows
/// are interleaved, `[k/2][rows]` from its first row's offset, so that its broadcasts read one
/// sequential stream (as `panels` packs f32 rows).
pub(crate) struct Bf16Rows {
    pairs: Vec<u32>,
    per_row: usize,
}

impl Bf16Rows {
    fn new(x: &[f32], m: usize, k: usize, blocks: &tiling::RowBlocks) -> Bf16Rows {
        let per_row = Bf16Panels::pairs(k);
        let mut pairs = vec![0u32; m * per_row];
        let convert = |(r0, rows, out): (usize, usize, &mut [u32])| {
            let mut row_pairs = vec![0u32; per_row];
            for i in 0..rows {
                let row = &x[(r0 + i) * k..(r0 + i + 1) * k];
                // Whole pairs first, in a loop that vectorises; then an odd last input.
                for (p, two) in row_pairs.iter_mut().zip(row.chunks_exact(2)) {
                    *p = u32::from(bf16_bits(two[0])) | (u32::from(bf16_bits(two[1])) << 16);
                }
                if k % 2 == 1 {
                    row_pairs[per_row - 1] = u32::from(bf16_bits(row[k - 1]));
                }
                for (c, p) in row_pairs.iter().enumerate() {
                    out[c * rows + i] = *p;
                }
            }
        };
        let mut parts = Vec::new();
        let mut rest = pairs.as_mut_slice();
        for (r0, rows) in blocks.iter() {
            let (head, tail) = rest.split_at_mut(rows * per_row);
            parts.push((r0, rows, head));
            rest = tail;
        }
        if m >= 8 {
            parts.into_par_iter().for_each(convert);
        } else {
            parts.into_iter().for_each(convert);
        }
        Bf16Rows { pairs, per_row }
    }
}

/// Builds the bf16 panels of several `[rows, k]` stored matrices stacked along their output
/// rows, each multiplied by its own factor and then rounded ([`bf16_bits`]): the fused q/k/v
/// or gate/up matrices straight from the mapped checkpoint, written once into an advised
/// buffer.
pub struct Bf16Stack {
    lines: Vec<Line>,
    k: usize,
    total_rows: usize,
    filled_rows: usize,
}

impl Bf16Stack {
    pub fn new(k: usize, total_rows: usize) -> Self {
        let len = total_rows.div_ceil(PANEL) * Bf16Panels::pairs(k);
        Bf16Stack { lines: super::huge_pages::zeroed_in_parallel(len, Line([0; 2 * PANEL])), k, total_rows, filled_rows: 0 }
    }

    /// Appends the output rows of one stored `[rows, k]` matrix (f32, bf16 or f16 bytes).
    pub fn push(&mut self, bytes: &[u8], dtype: candle_core::DType, rows: usize, factor: f32) -> Result<()> {
        let (k, first_row) = (self.k, self.filled_rows);
        if self.filled_rows + rows > self.total_rows {
            return Err(Error::Internal(format!("bf16 panel stack: {rows} more rows than the {} left", self.total_rows - self.filled_rows)));
        }
        let stored = super::huge_pages::StoredRows { bytes, dtype, k, first_row, rows, factor };
        // The block of inputs starts on a pair (it is a multiple of 256 inputs).
        super::huge_pages::fill_panels(&mut self.lines, Bf16Panels::pairs(k), stored, |out, c0, depth, outputs, block| {
            for c in 0..depth {
                let line = &mut out[(c0 + c) / 2].0;
                for j in outputs.clone() {
                    line[(j % PANEL) * 2 + (c0 + c) % 2] = bf16_bits(block[j % PANEL][c]);
                }
            }
        })?;
        self.filled_rows += rows;
        Ok(())
    }

    /// The matrix; every output row must have been pushed.
    pub fn finish(self) -> Result<Bf16Panels> {
        if self.filled_rows != self.total_rows {
            return Err(Error::Internal(format!("bf16 panel stack: {} of {} output rows filled", self.filled_rows, self.total_rows)));
        }
        Ok(Bf16Panels { lines: self.lines, n: self.total_rows, k: self.k })
    }
}
