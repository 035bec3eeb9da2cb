//! What the low-precision panel kernels ([`super::bf16_panels`], [`super::int8_panels`],
//! [`super::int4_panels`]) share: how a product's rows split into register blocks, and how its
//! panels split into parallel tasks, each walking chunks of the depth through every row block
//! (a chunk of a task's panels stays in L1 while every row block reads it, so the weights stream
//! from memory during the whole product instead of in one memory-bound first pass).

use rayon::prelude::*;

/// How `m` rows split into register blocks: as few as the kernel's largest block allows, of
/// nearly equal size, each with the panels its row count leaves registers for
/// (`panels_for_rows[r]` for `r` rows; its last index is the largest block).
pub(crate) struct RowBlocks {
    m: usize,
    rows: usize,
    panels: usize,
}

impl RowBlocks {
    pub(crate) fn new(m: usize, panels_for_rows: &[usize]) -> Self {
        let max_rows = panels_for_rows.len().saturating_sub(1).max(1);
        let rows = m.div_ceil(m.div_ceil(max_rows).max(1)).clamp(1, max_rows);
        RowBlocks { m, rows, panels: panels_for_rows.get(rows).copied().unwrap_or(1).max(1) }
    }

    /// `(first row, rows)` of each block.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.m).step_by(self.rows).map(|r0| (r0, self.rows.min(self.m - r0)))
    }
}

/// One kernel call: `rows` rows from `r0` × `panels` panels from `p0`, over depth chunk `chunk`;
/// `row_block` counts the row blocks before it (a kernel may use the second's time to prefetch
/// the next chunk, which the first reads from memory).
#[derive(Clone, Copy)]
pub(crate) struct Part {
    pub(crate) rows: usize,
    pub(crate) r0: usize,
    pub(crate) row_block: usize,
    pub(crate) panels: usize,
    pub(crate) p0: usize,
    pub(crate) chunk: usize,
}

/// Calls `kernel` for every part of a product over `total_panels` panels and `chunks` chunks of
/// depth, on the current pool. The panels are split into tasks of at most `most_per_task`; a
/// task alone visits its panels, in chunk order, so a kernel that writes only its part's
/// outputs never races, and each output sees its chunks in order.
pub(crate) fn for_each_part(total_panels: usize, most_per_task: usize, blocks: &RowBlocks, chunks: usize, kernel: impl Fn(Part) + Sync) {
    let per_task = total_panels.div_ceil(4 * rayon::current_num_threads()).clamp(1, most_per_task.max(1));
    (0..total_panels.div_ceil(per_task)).into_par_iter().for_each(|task| {
        let first = task * per_task;
        let last = (first + per_task).min(total_panels);
        let mut p0 = first;
        while p0 < last {
            let panels = blocks.panels.min(last - p0);
            for chunk in 0..chunks {
                for (row_block, (r0, rows)) in blocks.iter().enumerate() {
                    kernel(Part { rows, r0, row_block, panels, p0, chunk });
                }
            }
            p0 += panels;
        }
    });
}

/// An output buffer shared by the tasks of [`for_each_part`], each writing its own parts.
pub(crate) struct Output(*mut f32);
// SAFETY: the tasks write disjoint elements (see `for_each_part`).
unsafe impl Sync for Output {}

impl Output {
    pub(crate) fn new(y: &mut [f32]) -> Self {
        Output(y.as_mut_ptr())
    }
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_cover_the_rows_in_nearly_equal_blocks() {
        let panels = [0, 4, 6, 4, 3, 2, 2];
        for m in 0..50 {
            let blocks = RowBlocks::new(m, &panels);
            let sizes: Vec<usize> = blocks.iter().map(|(_, r)| r).collect();
            assert_eq!(sizes.iter().sum::<usize>(), m);
            assert!(sizes.iter().all(|&r| (1..=6).contains(&r)));
            assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= blocks.rows);
        }
        assert_eq!(RowBlocks::new(1, &panels).panels, 4);
        assert_eq!(RowBlocks::new(12, &panels).panels, 2);
    }

    #[test]
    fn every_part_is_visited_once_in_chunk_order() {
        let blocks = RowBlocks::new(13, &[0, 4, 6, 4, 3, 2, 2]);
        let seen = std::sync::Mutex::new(Vec::new());
        for_each_part(37, 8, &blocks, 3, |part| seen.lock().unwrap().push((part.p0, part.panels, part.r0, part.chunk)));
        let seen = seen.into_inner().unwrap();
        let mut cells = std::collections::HashMap::new();
        for &(p0, panels, r0, chunk) in &seen {
            for p in p0..p0 + panels {
                cells.entry((p, r0)).or_insert_with(Vec::new).push(chunk);
            }
        }
        assert_eq!(cells.len(), 37 * blocks.iter().count());
        assert!(cells.values().all(|chunks| chunks == &[0, 1, 2]));
    }
}
