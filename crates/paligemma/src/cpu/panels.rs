//! Dense f32 projections on the CPU in a panel-major layout, for every row count: the prompt's
//! hundreds of rows and a continuous batch's decode step of 1 to 16 rows.
//!
//! Why a layout of our own: a decode step with several rows is a tall, thin product, and from a
//! row-major `[in, out]` matrix no kernel can keep a tile of outputs in registers while the
//! weights stream, because a column tile is strided (one cache line per row of the matrix, which
//! defeats the prefetchers and the TLB; benches/RESULTS.md, "Continuous batching"). So the matrix
//! is stored as panels of [`PANEL`] output columns, each panel contiguous over all input rows
//! (`[n / 16][k][16]`, the last panel zero-padded). That is the packed-B format of a BLIS-style
//! GEMM, done once at load: the prompt's products need no packing either.
//!
//! Batch invariance ([`crate::batching`]): every output element is one chain of fused
//! multiply-adds over the input index in order, `y = fma(x[c], w[c], y)` for `c = 0, 1, …`,
//! starting from zero. Register blocking, cache blocking (an accumulator stored and reloaded
//! between blocks is exact), threads, and the number of rows change which elements are computed
//! together, never the chain of any one of them. So a row's outputs are the same bits alone or
//! in a batch of any size, and the same on the AVX-512, AVX2 and portable paths.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

mod kernels;
pub use kernels::Isa;

/// Output columns per panel: one AVX-512 register, or two AVX2 ones.
pub const PANEL: usize = 16;

/// Input rows per cache block: a panel's block is 16 KiB, which stays in L1 while every group
/// of rows reads it.
const BLOCK_K: usize = 256;

/// Most panels per parallel task: the prompt's block of activations (`rows × BLOCK_K`) stays
/// in L2 across a task's panels.
const PANELS_PER_TASK: usize = 8;

/// Most rows of one slice of a prompt: its block of activations (`rows × BLOCK_K`, 512 KiB)
/// fits L2, so every panel rereads it from there.
const MAX_SLICE_ROWS: usize = 512;

/// Most panels in one register block: more independent streams than this do not help a
/// decode step, which is bound by memory.
const MAX_PANELS: usize = 6;

/// Up to this many rows (a decode step) a task goes panel by panel; beyond it (a prompt) block
/// of inputs by block.
const FEW_ROWS: usize = 16;

/// Length of the panel-major buffer for a `[k, n]` matrix.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * k * PANEL
}

/// Index of element `(c, j)` (input `c`, output `j`) in the panel-major buffer.
#[inline(always)]
pub fn packed_index(k: usize, c: usize, j: usize) -> usize {
    (j / PANEL) * k * PANEL + c * PANEL + j % PANEL
}

/// `x · W` for `x: [m, k]` (f32 on the CPU, any layout) and the panel-major `W` of a `[k, n]`
/// matrix.
pub fn matmul_tensor(x: &Tensor, w: &[f32], k: usize, n: usize) -> Result<Tensor> {
    let (m, x_k) = x.dims2()?;
    if x_k != k || x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Err(Error::Internal(format!("panel matmul: input {:?} {:?} for a [{k}, {n}] f32 CPU matrix", x.dims(), x.dtype())));
    }
    let x = x.contiguous()?;
    if w.len() < packed_len(k, n) {
        return Err(Error::Internal(format!("panel matmul: {} values for a [{k}, {n}] matrix", w.len())));
    }
    let y = super::with_f32_slice(&x, |xs| Ok(matmul(xs, m, w, k, n)))?.ok_or_else(|| Error::Internal("panel matmul: the input is not contiguous f32".into()))?;
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

/// `y = x · W` for `x: [m, k]` row-major and `W: [k, n]` in the panel-major layout; `y: [m, n]`.
pub fn matmul(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    matmul_on(Isa::detect(), x, m, w, k, n)
}

/// [`matmul`] with the kernels of `isa`: every `isa` gives the same bits, which the tests check.
pub fn matmul_on(isa: Isa, x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() >= m * k && w.len() >= packed_len(k, n), "panel matmul: operands too short");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return y;
    }
    let panels = n.div_ceil(PANEL);
    // Enough tasks to balance the pool, each with enough panels to amortise its scheduling.
    let per_task = panels.div_ceil(4 * rayon::current_num_threads()).clamp(1, PANELS_PER_TASK);
    // A prompt of many rows goes in slices whose block of activations fits L2.
    for (slice, y_slice) in x[..m * k].chunks(MAX_SLICE_ROWS * k).zip(y.chunks_mut(MAX_SLICE_ROWS * n)) {
        let rows = RowBlocks::new(slice.len() / k, isa);
        let xp = rows.pack(slice, k);
        let out = Output(y_slice.as_mut_ptr());
        (0..panels.div_ceil(per_task)).into_par_iter().for_each(|task| {
            let first = task * per_task;
            let last = (first + per_task).min(panels);
            // SAFETY: this task writes only the columns of panels first..last of `y_slice`,
            // which no other task writes, and `y_slice` (rows × n floats) outlives the loop.
            unsafe { panels_range(&xp, &rows, w, k, n, first..last, &out) };
        });
    }
    y
}

/// How the rows split into register blocks: as few blocks as the ISA's registers allow, of
/// nearly equal size, each with as many panels as its accumulators leave room for.
struct RowBlocks {
    isa: Isa,
    m: usize,
    rows: usize,
    panels: usize,
}

impl RowBlocks {
    fn new(m: usize, isa: Isa) -> Self {
        let (max_rows, accumulators) = isa.block_limits();
        let rows = m.div_ceil(m.div_ceil(max_rows));
        RowBlocks { isa, m, rows, panels: (accumulators / rows).min(MAX_PANELS) }
    }

    /// `(first row, rows)` of each block.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.m).step_by(self.rows).map(|r0| (r0, self.rows.min(self.m - r0)))
    }

    /// x interleaved per block, `[k][rows]`, so that a block's broadcasts read one sequential
    /// stream instead of one per row (rows k floats apart alias in the L1 sets).
    fn pack(&self, x: &[f32], k: usize) -> Vec<f32> {
        let mut xp = Vec::with_capacity(self.m * k);
        for (r0, rows) in self.blocks() {
            for c in 0..k {
                xp.extend((r0..r0 + rows).map(|i| x[i * k + c]));
            }
        }
        xp
    }
}

/// The output buffer shared by the tasks, each writing its own columns.
struct Output(*mut f32);
// SAFETY: tasks write disjoint columns (see `matmul`).
unsafe impl Sync for Output {}

/// One task: every row of `y` for the columns of `panels`. Few rows (a decode step) go panel
/// by panel, so that each panel streams from memory in one piece; a prompt goes block of
/// inputs by block, so that its block of activations stays in L2 across the panels.
///
/// # Safety
/// No other thread may access the columns of `panels` in `out` during the call, and `out` must
/// hold `m × n` floats.
unsafe fn panels_range(xp: &[f32], rows: &RowBlocks, w: &[f32], k: usize, n: usize, panels: std::ops::Range<usize>, out: &Output) {
    let groups = panels.clone().step_by(rows.panels).map(|p| (p, rows.panels.min(panels.end - p)));
    let step = |p: usize, count: usize, c0: usize| {
        let depth = BLOCK_K.min(k - c0);
        for (r0, block_rows) in rows.blocks() {
            let tile = Tile {
                x: &xp[r0 * k + c0 * block_rows..],
                w: &w[p * k * PANEL + c0 * PANEL..],
                w_stride: k * PANEL,
                depth,
                first: c0 == 0,
            };
            let cols = (n - p * PANEL).min(count * PANEL);
            // SAFETY: rows r0..r0 + block_rows and columns p·16..p·16 + cols lie inside `out`
            // and inside this task's panels (the caller's contract).
            unsafe { kernels::block(rows.isa, block_rows, count, &tile, out.0.add(r0 * n + p * PANEL), n, cols) };
        }
    };
    if rows.m <= FEW_ROWS {
        for (p, count) in groups {
            (0..k).step_by(BLOCK_K).for_each(|c0| step(p, count, c0));
        }
    } else {
        for c0 in (0..k).step_by(BLOCK_K) {
            groups.clone().for_each(|(p, count)| step(p, count, c0));
        }
    }
}

/// One register block's inputs: its rows of x interleaved (`[depth][rows]`) from `x`, its
/// panels of W from `w` (panel stride `w_stride`), over `depth` inputs; `first` when the
/// accumulators start from zero rather than from what `y` holds.
pub(crate) struct Tile<'a> {
    x: &'a [f32],
    w: &'a [f32],
    w_stride: usize,
    depth: usize,
    first: bool,
}

/// The portable chains on any target, for the tests: the same bits as the SIMD paths.
#[cfg(test)]
pub(crate) fn matmul_scalar(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for c in 0..k {
                acc = super::fmadd(x[i * k + c], w[packed_index(k, c, j)], acc);
            }
            y[i * n + j] = acc;
        }
    }
    y
}

/// `[k, n]` row-major → panel-major (tests and benches; the loader packs straight from the
/// checkpoint, `huge_pages::PanelStack`).
pub fn pack(wt: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_len(k, n)];
    for c in 0..k {
        for j in 0..n {
            out[packed_index(k, c, j)] = wt[c * n + j];
        }
    }
    out
}




#[cfg(test)]
mod tests;

/// The storage of a panel-major matrix: built at load, or mapped in place from a prepared
/// folder ([`crate::prepared`]).
#[derive(Debug, Clone)]
pub enum PanelBuffer {
    Owned(std::sync::Arc<Vec<f32>>),
    Mapped(crate::weights::MappedF32),
}

impl PanelBuffer {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            PanelBuffer::Owned(v) => v,
            PanelBuffer::Mapped(m) => m.as_slice(),
        }
    }
}
