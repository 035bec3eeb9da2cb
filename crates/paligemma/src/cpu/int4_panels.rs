//! `q4k` matrices on CPUs with AVX-512 VNNI, in a panel-major layout of our own, for every row
//! count: decode at the memory's bandwidth, and the prompt in int8 arithmetic.
//!
//! Why not candle's kernel: its `q4k` matvec unpacks each block with scalar-heavy code and
//! decoded PaliGemma-3B at 102 ms/token on 2 cores, no faster than `q8_0`, though it reads half
//! the bytes (benches/RESULTS.md): the dequantization was the bottleneck, not memory.
//!
//! The layout follows [`super::int8_panels`]: panels of 16 outputs, each contiguous over the
//! whole depth. Per panel and super-block of 256 inputs, 37 cache lines in a row, in the order
//! the kernel reads them (one ascending stream per panel, which the prefetchers follow; with the
//! scale lines after the nibbles and the `d` line last, two threads read 20–23 GB/s where they
//! now read 29–33, `examples/int4_probe`): first a line of the super-block's f16 `d` (bytes
//! 0..32) and `dmin` (32..64); then per pair of sub-blocks a line of their 6-bit scales and mins
//! unpacked to bytes (sub-block `s`'s 16 scales at `32·(s%2)`, its 16 mins 16 bytes on), and
//! the pair's 8 nibble lines: 4 per sub-block of 32 inputs, each `[16 columns][4 bytes]`, byte
//! `j` of a column in line `g` holding input `8g + j` in its low nibble and `8g + 4 + j` in its
//! high one. That is 4.625 bits per weight against Q4_K's 4.5, with the values and scales of candle's blocks.
//!
//! The arithmetic: activations are rounded per block of 32 to signed bytes with an f32 scale
//! (`int8_panels::QuantizedRows`). A weight is `D·q − M` (`D = d·scale`, `M = dmin·min`, as
//! candle dequantizes), so per output and sub-block the exact integer sum `Σ q·x` (`vpdpbusd`:
//! the nibbles are unsigned bytes) gives `acc = fma(Σq·x, D·dx, acc)`, then
//! `acc = fma(−M·dx, Σx, acc)`: one fixed chain per output over the sub-blocks in order, so a
//! row's bits are the same alone or in a batch, on the VNNI and the portable path alike.

use half::f16;
use rayon::prelude::*;

use super::int8_panels::QuantizedRows;
use super::tiling;
use crate::error::{Error, Result};

mod kernels;
#[cfg(test)]
mod tests;

/// Output columns per panel.
pub const PANEL: usize = 16;
/// Inputs per Q4_K super-block (one `d` and `dmin`).
pub const SUPER: usize = 256;
/// Inputs per sub-block (one scale and min; one activation block).
const SUB: usize = 32;
const SUBS: usize = SUPER / SUB;
/// 64-byte lines per sub-block of a panel: 32 inputs × 16 columns × 4 bits.
const LINES_PER_SUB: usize = 4;
/// The super-block's `d`/`dmin` line comes first; then, per pair of sub-blocks, their scales
/// and mins line and their 8 nibble lines: the order the kernel reads them in.
const D_LINE: usize = 0;
const PAIR_LINES: usize = 1 + 2 * LINES_PER_SUB;
/// Lines per panel and super-block.
const GROUP_LINES: usize = 1 + SUBS / 2 * PAIR_LINES;

/// The line of sub-block `s`'s scales (bytes `32·(s%2)..`) and mins (16 bytes on).
const fn scale_line(s: usize) -> usize {
    1 + s / 2 * PAIR_LINES
}

/// Sub-block `s`'s nibble line `g` (inputs `8g..8g + 8`).
const fn nibble_line(s: usize, g: usize) -> usize {
    scale_line(s) + 1 + (s % 2) * LINES_PER_SUB + g
}

/// A candle Q4_K block: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and mins, 128
/// bytes of nibbles.
const Q4K_BYTES: usize = 144;
/// Most panels per parallel task.
const PANELS_PER_TASK: usize = 8;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// Whether this CPU runs the kernel: the one [`super::int8_panels`] needs.
pub fn available() -> bool {
    super::int8_panels::available()
}

/// A `[n, k]` Q4_K matrix (rows are the outputs) as panels of 16 outputs (see the module).
pub struct Int4Panels {
    /// `[panel][super][GROUP_LINES]`.
    lines: Vec<Line>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for Int4Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int4Panels[{}, {}]", self.n, self.k)
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from a block's 12 bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Column `col`'s `D = d·scale` and `M = dmin·min` for sub-block `s` of a super-block's lines,
/// computed as candle computes them.
pub(crate) fn sub_block_scales(group: &[Line], s: usize, col: usize) -> (f32, f32) {
    let scales = &group[scale_line(s)].0[32 * (s % 2)..];
    let half = |at: usize| f16::from_le_bytes([group[D_LINE].0[at], group[D_LINE].0[at + 1]]).to_f32();
    (half(col * 2) * f32::from(scales[col]), half(32 + col * 2) * f32::from(scales[16 + col]))
}

impl Int4Panels {
    /// Whether a `[n, k]` matrix fits the layout: whole panels and whole super-blocks.
    pub fn fits(n: usize, k: usize) -> bool {
        n > 0 && k > 0 && n.is_multiple_of(PANEL) && k.is_multiple_of(SUPER)
    }

    /// Repacks candle's Q4_K bytes of a `[n, k]` matrix (row-major blocks), panel by panel on
    /// the current pool.
    pub fn from_q4k(bytes: &[u8], n: usize, k: usize) -> Result<Int4Panels> {
        let kb = k / SUPER;
        if !Self::fits(n, k) || bytes.len() != n * kb * Q4K_BYTES {
            return Err(Error::Weights(format!("{} bytes of q4k blocks for a [{n}, {k}] matrix (expected {})", bytes.len(), n * kb * Q4K_BYTES)));
        }
        let panels = n / PANEL;
        let mut lines = super::huge_pages::zeroed_in_parallel(panels * kb * GROUP_LINES, Line([0; 64]));
        let row_bytes = kb * Q4K_BYTES;
        lines.par_chunks_mut(kb * GROUP_LINES).enumerate().for_each(|(p, panel)| {
            for col in 0..PANEL {
                let row = &bytes[(p * PANEL + col) * row_bytes..][..row_bytes];
                for (block, group) in row.chunks_exact(Q4K_BYTES).zip(panel.chunks_exact_mut(GROUP_LINES)) {
                    group[D_LINE].0[col * 2..col * 2 + 2].copy_from_slice(&block[0..2]);
                    group[D_LINE].0[32 + col * 2..32 + col * 2 + 2].copy_from_slice(&block[2..4]);
                    let (packed, qs) = (&block[4..16], &block[16..]);
                    for s in 0..SUBS {
                        let (sc, m) = scale_min(s, packed);
                        let scales = &mut group[scale_line(s)].0[32 * (s % 2)..];
                        scales[col] = sc;
                        scales[16 + col] = m;
                        // Input t of sub-block s: byte (s / 2)·32 + t of the quants, the low
                        // nibble for even sub-blocks, the high one for odd.
                        let nibble = |t: usize| if s % 2 == 0 { qs[(s / 2) * 32 + t] & 0xF } else { qs[(s / 2) * 32 + t] >> 4 };
                        for g in 0..LINES_PER_SUB {
                            let line = &mut group[nibble_line(s, g)].0;
                            for j in 0..4 {
                                line[col * 4 + j] = nibble(8 * g + j) | (nibble(8 * g + 4 + j) << 4);
                            }
                        }
                    }
                }
            }
        });
        Ok(Int4Panels { lines, n, k })
    }

    /// The lines of panel `p`'s super-block `b`.
    pub(crate) fn group(&self, p: usize, b: usize) -> &[Line] {
        &self.lines[(p * (self.k / SUPER) + b) * GROUP_LINES..][..GROUP_LINES]
    }

    /// Weight `(j, c)` (output `j`, input `c`) as f32, `D·q − M` as candle dequantizes it (the
    /// tests compare it with candle's dequantization).
    #[cfg(test)]
    pub(crate) fn value(&self, j: usize, c: usize) -> f32 {
        let (col, s, t) = (j % PANEL, (c % SUPER) / SUB, c % SUB);
        let group = self.group(j / PANEL, c / SUPER);
        let byte = group[nibble_line(s, t / 8)].0[col * 4 + t % 4];
        let q = if t % 8 < 4 { byte & 0xF } else { byte >> 4 };
        let (dd, mm) = sub_block_scales(group, s, col);
        dd * f32::from(q) - mm
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (4.625 bits per weight).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// `y = x · Wᵀ` for `x: [m, k]` row-major f32; `y: [m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, available())
    }

    /// [`Int4Panels::matmul`] with the VNNI kernels or the portable ones: the same bits.
    pub(crate) fn matmul_with(&self, x: &[f32], m: usize, vnni: bool) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert!(x.len() >= m * k, "int4 panel matmul: {} inputs for {m} rows of {k}", x.len());
        let mut y = vec![0f32; m * n];
        if m == 0 {
            return y;
        }
        let rows_q = QuantizedRows::new(&x[..m * k], m, k);
        let kb = k / SUPER;
        let panels = n / PANEL;
        let out = tiling::Output::new(&mut y);
        let blocks = tiling::RowBlocks::new(m, &kernels::PANELS_FOR_ROWS);
        tiling::for_each_part(panels, PANELS_PER_TASK, &blocks, kb, |part| {
            // SAFETY: `for_each_part` gives this part's outputs (rows r0.., the columns of its
            // panels, inside `y`, which outlives the call) to this call alone.
            unsafe { kernels::block(vnni, &part, &rows_q, self, out.ptr(), n) };
        });
        y
    }
}
