//! `q8_0` matrices on CPUs with AVX-512 VNNI, in a panel-major layout of our own, for every row
//! count: the prompt's hundreds of rows, a continuous batch's decode step, one decoded token.
//!
//! Why not candle's kernel: candle repacks `q8_0` into 16-column tiles for `vpdpbusd` as well,
//! but its kernel blocks 4 rows × 1 tile and rounds each activation row to one scale per 256
//! values. A prompt ran at 257 GOP/s there (`[32768, 2048]`, 266 rows), 29 % of this CPU's int8
//! peak and only 1.4× our f32 panel kernel, and a 16-row decode step of PaliGemma-3B in `q8_0`
//! cost nearly what an f32 one does (benches/RESULTS.md). Here a register block holds up to
//! 6 rows × 2 panels or 1 row × 8 panels, each activation block of 32 values has its own scale
//! (closer to f32 than candle's 256), and the layout is ours, so a prepared folder can store it.
//!
//! The arithmetic (`QuantizedRows`, `kernels`): weights are stored `+128` as unsigned bytes
//! so `vpdpbusd` (unsigned × signed bytes, four products per 32-bit lane) applies directly; the
//! activations are rounded per block of 32 to signed bytes with an f32 scale, and the `+128` is
//! taken back exactly by starting each block's integer sum at `−128 · Σx`. Per output and block,
//! then, `acc = fma(Σ w·x as f32, d_w · d_x, acc)`: the integer sum is exact, so every output
//! is one chain over the blocks in order whatever the register block, row count or thread
//! count, and a row's bits are the same alone or in a batch (as [`super::panels`] promises for
//! f32), on the VNNI and the portable path alike.

use half::f16;
use rayon::prelude::*;

pub(crate) use rows::QuantizedRows;

use super::tiling;
use crate::error::{Error, Result};

mod kernels;
mod rows;
#[cfg(test)]
mod tests;

/// Output columns per panel: one AVX-512 register of 32-bit sums.
pub const PANEL: usize = 16;
/// Inputs per `q8_0` block, each with its own scale (weights and activations alike).
pub const BLOCK: usize = 32;
/// Four inputs per 32-bit lane of `vpdpbusd`, so a block is eight groups.
const GROUPS: usize = BLOCK / 4;
/// A candle `q8_0` block: an f16 scale, then 32 signed bytes.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// Input blocks per chunk (256 inputs): a chunk of a register block's panels is at most
/// 8 × 544 bytes per panel, which stays in L1 across the row blocks.
const BLOCKS_PER_CHUNK: usize = 8;
/// Most panels per parallel task (enough work to amortise its scheduling).
const PANELS_PER_TASK: usize = 8;

/// 64 bytes on a cache line: one group of one block of one panel (16 columns × 4 inputs).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Whether this CPU runs the kernel: AVX-512 with VNNI, not turned off by
/// `PALIGEMMA_NO_AVX512=1` (which stands in for an older CPU, [`super::panels::Isa::detect`]).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::panels::Isa::detect() == super::panels::Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A `[n, k]` `q8_0` matrix (rows are the outputs) as panels of 16 outputs: per panel and
/// block of 32 inputs, 8 lines of `[16 columns][4 inputs]` weights `+128`, and 16 f16 scales.
/// Stored as all the values (`n/16 · k/32 · 512` bytes), then all the scales (`n/16 · k/32 ·
/// 16` little-endian f16): built at load, or mapped in place from a prepared folder.
pub struct Int8Panels {
    storage: Storage,
    n: usize,
    k: usize,
}

enum Storage {
    Owned { values: Vec<Line>, scales: Vec<f16> },
    Mapped(crate::weights::MappedBytes),
}

impl std::fmt::Debug for Int8Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Panels[{}, {}]", self.n, self.k)
    }
}

impl Int8Panels {
    /// Whether a `[n, k]` matrix fits the layout: whole panels and whole blocks.
    pub fn fits(n: usize, k: usize) -> bool {
        n > 0 && k > 0 && n.is_multiple_of(PANEL) && k.is_multiple_of(BLOCK)
    }

    /// Repacks candle's `q8_0` bytes of a `[n, k]` matrix (row-major blocks: an f16 scale and 32
    /// signed bytes each), panel by panel on the current pool. The values and scales are
    /// candle's, so the matrix is the one candle's kernels would multiply.
    pub fn from_q8_0(bytes: &[u8], n: usize, k: usize) -> Result<Int8Panels> {
        let kb = k / BLOCK;
        if !Self::fits(n, k) || bytes.len() != n * kb * Q8_0_BYTES {
            return Err(Error::Weights(format!("{} bytes of q8_0 blocks for a [{n}, {k}] matrix (expected {})", bytes.len(), n * kb * Q8_0_BYTES)));
        }
        let panels = n / PANEL;
        let lines = panels * kb * GROUPS;
        // Advised as huge pages before the first touch (decode reads them all every token), and
        // written once: no zero-fill pass over gigabytes first.
        let mut values: Vec<Line> = super::huge_pages::advised_vec(lines);
        let mut scales = vec![f16::ZERO; panels * kb * PANEL];
        let row_bytes = kb * Q8_0_BYTES;
        let spare = &mut values.spare_capacity_mut()[..lines];
        spare.par_chunks_mut(kb * GROUPS).zip(scales.par_chunks_mut(kb * PANEL)).enumerate().for_each(|(p, (panel_lines, panel_scales))| {
            let rows = &bytes[p * PANEL * row_bytes..(p + 1) * PANEL * row_bytes];
            for (b, (block_lines, block_scales)) in panel_lines.chunks_exact_mut(GROUPS).zip(panel_scales.chunks_exact_mut(PANEL)).enumerate() {
                let mut tile = [Line([0; 64]); GROUPS];
                for (col, scale) in block_scales.iter_mut().enumerate() {
                    let block = &rows[col * row_bytes + b * Q8_0_BYTES..][..Q8_0_BYTES];
                    *scale = f16::from_le_bytes([block[0], block[1]]);
                    for (g, line) in tile.iter_mut().enumerate() {
                        let four = &block[2 + g * 4..][..4];
                        // i8 + 128 as u8 is the sign bit flipped.
                        line.0[col * 4..col * 4 + 4].copy_from_slice(&[four[0] ^ 0x80, four[1] ^ 0x80, four[2] ^ 0x80, four[3] ^ 0x80]);
                    }
                }
                for (dst, line) in block_lines.iter_mut().zip(tile) {
                    dst.write(line);
                }
            }
        });
        // SAFETY: the loop above wrote every one of the first `lines` elements (one per group of
        // every block of every panel: the chunks cover `spare` exactly).
        unsafe { values.set_len(lines) };
        Ok(Int8Panels { storage: Storage::Owned { values, scales }, n, k })
    }

    /// The matrix stored by [`Int8Panels::stored_bytes`], used in place.
    pub fn from_mapped(mapped: crate::weights::MappedBytes, n: usize, k: usize) -> Result<Int8Panels> {
        if !Self::fits(n, k) || mapped.as_slice().len() != Self::stored_len(n, k) {
            return Err(Error::Weights(format!("{} bytes of int8 panels for a [{n}, {k}] matrix (expected {})", mapped.as_slice().len(), Self::stored_len(n, k))));
        }
        Ok(Int8Panels { storage: Storage::Mapped(mapped), n, k })
    }

    /// Bytes of a stored `[n, k]` matrix: values, then scales (8.5 bits per weight, as `q8_0`).
    pub fn stored_len(n: usize, k: usize) -> usize {
        (n / PANEL) * (k / BLOCK) * (GROUPS * 64 + PANEL * 2)
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        Self::stored_len(self.n, self.k)
    }

    /// `[panel][block][group][column][4]` values, `+128`.
    fn values(&self) -> &[u8] {
        match &self.storage {
            // SAFETY: a `Line` is 64 plain bytes without padding, so its vector is
            // `len · 64` initialised bytes.
            Storage::Owned { values, .. } => unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 64) },
            Storage::Mapped(m) => &m.as_slice()[..self.values_len()],
        }
    }

    /// `[panel][block][column]` f16 scales, little-endian.
    fn scales(&self) -> &[u8] {
        match &self.storage {
            // SAFETY: f16 is two plain bytes, stored little-endian on every host this runs on
            // (x86-64, aarch64).
            Storage::Owned { scales, .. } => unsafe { std::slice::from_raw_parts(scales.as_ptr().cast::<u8>(), scales.len() * 2) },
            Storage::Mapped(m) => &m.as_slice()[self.values_len()..],
        }
    }

    fn values_len(&self) -> usize {
        (self.n / PANEL) * (self.k / BLOCK) * GROUPS * 64
    }

    /// The matrix as a prepared folder stores it: values, then scales.
    pub fn stored_bytes(&self) -> Vec<u8> {
        [self.values(), self.scales()].concat()
    }

    /// candle's `q8_0` blocks of a stored `[n, k]` matrix (the inverse of the packing), for
    /// CPUs without VNNI, which read a prepared folder through candle's kernels.
    pub fn q8_0_from_stored(stored: &[u8], n: usize, k: usize) -> Result<Vec<u8>> {
        if !Self::fits(n, k) || stored.len() != Self::stored_len(n, k) {
            return Err(Error::Weights(format!("{} bytes of int8 panels for a [{n}, {k}] matrix (expected {})", stored.len(), Self::stored_len(n, k))));
        }
        let kb = k / BLOCK;
        let (values, scales) = stored.split_at((n / PANEL) * kb * GROUPS * 64);
        let mut out = vec![0u8; n * kb * Q8_0_BYTES];
        for (row, out_row) in out.chunks_exact_mut(kb * Q8_0_BYTES).enumerate() {
            let (p, col) = (row / PANEL, row % PANEL);
            for (b, block) in out_row.chunks_exact_mut(Q8_0_BYTES).enumerate() {
                let s = ((p * kb + b) * PANEL + col) * 2;
                block[..2].copy_from_slice(&scales[s..s + 2]);
                for g in 0..GROUPS {
                    let v = ((p * kb + b) * GROUPS + g) * 64 + col * 4;
                    for j in 0..4 {
                        block[2 + g * 4 + j] = values[v + j] ^ 0x80;
                    }
                }
            }
        }
        Ok(out)
    }

    /// `y = x · Wᵀ` for `x: [m, k]` row-major f32; `y: [m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, available())
    }

    /// [`Int8Panels::matmul`] with the VNNI kernels or the portable ones: the same bits, which
    /// the tests check.
    pub(crate) fn matmul_with(&self, x: &[f32], m: usize, vnni: bool) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert!(x.len() >= m * k, "int8 panel matmul: {} inputs for {m} rows of {k}", x.len());
        let mut y = vec![0f32; m * n];
        if m == 0 {
            return y;
        }
        let rows_q = QuantizedRows::new(&x[..m * k], m, k);
        let kb = k / BLOCK;
        let panels = n / PANEL;
        let out = tiling::Output::new(&mut y);
        let blocks = tiling::RowBlocks::new(m, &kernels::PANELS_FOR_ROWS);
        tiling::for_each_part(panels, PANELS_PER_TASK, &blocks, kb.div_ceil(BLOCKS_PER_CHUNK), |part| {
            let c0 = part.chunk * BLOCKS_PER_CHUNK;
            // SAFETY: `for_each_part` gives this part's outputs (rows r0.., the columns of its
            // panels, inside `y`, which outlives the call) to this call alone.
            unsafe { kernels::block(vnni, &part, c0..(c0 + BLOCKS_PER_CHUNK).min(kb), &rows_q, self, out.ptr(), n) };
        });
        y
    }
}
