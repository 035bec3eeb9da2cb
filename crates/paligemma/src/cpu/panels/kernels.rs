//! The register blocks of the panel kernel, one per instruction set. Each computes
//! `R rows × P panels` of outputs over a tile's depth with the same per-element chain of fused
//! multiply-adds (the module above says why that matters), so all of them give the same bits.

use super::{Tile, PANEL};

/// The instruction set the kernels run with, picked once at run time: the prebuilt binary is
/// compiled for AVX2 and FMA, and uses AVX-512 where the CPU has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 32 sixteen-lane registers: a panel is one register.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 16 eight-lane registers: a panel is two.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    Avx2,
    /// Plain Rust, vectorised by LLVM where it can (aarch64, and the tests).
    Portable,
}

impl Isa {
    /// The best set this CPU runs; `PALIGEMMA_NO_AVX512=1` stands in for a CPU without AVX-512.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::env::var_os("PALIGEMMA_NO_AVX512").is_none() && std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            return Isa::Avx2;
            #[allow(unreachable_code)]
            Isa::Portable
        })
    }

    /// Every set this build can run on this CPU (for the tests).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        let mut sets = vec![Isa::Portable];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        sets.push(Isa::Avx2);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            sets.push(Isa::Avx512);
        }
        sets
    }

    /// Most rows of a register block, and most accumulators (in panels) it may hold.
    pub(super) fn block_limits(self) -> (usize, usize) {
        match self {
            // 24 accumulators, up to 6 weight registers and a broadcast.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (8, 24),
            // 12 accumulators (6 panels), two weight registers and a broadcast.
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            Isa::Avx2 => (6, 6),
            Isa::Portable => (4, 8),
        }
    }
}

/// Runs the kernel monomorphised for a block of `rows × panels`.
///
/// # Safety
/// `y` must be valid for reads and writes of `rows` rows (stride `y_stride`) of `cols ≤
/// panels · 16` floats, which no other thread accesses during the call; `isa` must be one
/// this CPU runs ([`Isa::detect`], [`Isa::available`]).
pub(super) unsafe fn block(isa: Isa, rows: usize, panels: usize, tile: &Tile, y: *mut f32, y_stride: usize, cols: usize) {
    assert!(tile.x.len() >= rows * tile.depth && tile.w.len() >= (panels - 1) * tile.w_stride + tile.depth * PANEL && cols <= panels * PANEL);
    macro_rules! dispatch {
        ($kernel:ident: $(($r:literal, $p:literal)),*) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller; the assertion above bounds the tile's reads.
                $(($r, $p) => unsafe { $kernel::<$r, $p>(tile, y, y_stride, cols) },)*
                _ => unreachable!("a block of {rows} rows × {panels} panels"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => dispatch!(avx512: (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
            (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6), (4, 1), (4, 2), (4, 3), (4, 4), (4, 5), (4, 6), (5, 1), (5, 2), (5, 3), (5, 4),
            (6, 1), (6, 2), (6, 3), (6, 4), (7, 1), (7, 2), (7, 3), (8, 1), (8, 2), (8, 3)),
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        Isa::Avx2 => dispatch!(avx2: (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1), (5, 1), (6, 1)),
        Isa::Portable => dispatch!(portable: (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8), (2, 1), (2, 2), (2, 3), (2, 4),
            (3, 1), (3, 2), (4, 1), (4, 2)),
    }
}

/// Copies a block's outputs between `y` and a full-width stack tile, so that a partial last
/// panel touches only its `cols` columns.
struct Spill<const R: usize, const P: usize> {
    tile: [[[f32; PANEL]; P]; R],
}

impl<const R: usize, const P: usize> Spill<R, P> {
    /// Row `i` of the block as a full `P · 16` row: `y` itself when whole, else the stack copy
    /// (filled from `y` when `read`).
    ///
    /// # Safety
    /// As [`block`].
    #[inline(always)]
    unsafe fn row(&mut self, y: *mut f32, y_stride: usize, cols: usize, i: usize, read: bool) -> *mut f32 {
        // SAFETY: the caller's contract on y.
        let row = unsafe { y.add(i * y_stride) };
        if cols == P * PANEL {
            return row;
        }
        let spill = self.tile[i].as_flattened_mut().as_mut_ptr();
        if read {
            // SAFETY: `cols` floats of y's row i (the caller's contract) into a tile of P · 16.
            unsafe { std::ptr::copy_nonoverlapping(row, spill, cols) };
        }
        spill
    }

    /// Writes row `i` back to `y` when it went through the stack copy.
    ///
    /// # Safety
    /// As [`block`].
    #[inline(always)]
    unsafe fn write_back(&self, y: *mut f32, y_stride: usize, cols: usize, i: usize) {
        if cols != P * PANEL {
            // SAFETY: the caller's contract on y.
            unsafe { std::ptr::copy_nonoverlapping(self.tile[i].as_flattened().as_ptr(), y.add(i * y_stride), cols) };
        }
    }
}

/// # Safety
/// As [`block`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const R: usize, const P: usize>(tile: &Tile, y: *mut f32, y_stride: usize, cols: usize) {
    use std::arch::x86_64::*;
    let mut spill = Spill::<R, P> { tile: [[[0.0; PANEL]; P]; R] };
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: reads of x and w stay inside the slices ([`block`] asserts their lengths), and y
    // is the caller's contract.
    unsafe {
        if !tile.first {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let src = spill.row(y, y_stride, cols, i, true);
                for (p, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(src.add(p * PANEL));
                }
            }
        }
        let (xp, wp) = (tile.x.as_ptr(), tile.w.as_ptr());
        for c in 0..tile.depth {
            let mut wv = [_mm512_setzero_ps(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(wp.add(p * tile.w_stride + c * PANEL));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*xp.add(c * R + i));
                for (a, v) in acc_i.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xb, *v, *a);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            let dst = spill.row(y, y_stride, cols, i, false);
            for (p, a) in acc_i.iter().enumerate() {
                _mm512_storeu_ps(dst.add(p * PANEL), *a);
            }
            spill.write_back(y, y_stride, cols, i);
        }
    }
}

/// # Safety
/// As [`block`].
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
unsafe fn avx2<const R: usize, const P: usize>(tile: &Tile, y: *mut f32, y_stride: usize, cols: usize) {
    use std::arch::x86_64::*;
    let mut spill = Spill::<R, P> { tile: [[[0.0; PANEL]; P]; R] };
    // SAFETY: AVX2 and FMA are enabled at compile time (cfg above); reads of x and w stay
    // inside the slices ([`block`] asserts their lengths), and y is the caller's contract.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
        if !tile.first {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let src = spill.row(y, y_stride, cols, i, true);
                for (p, a) in acc_i.iter_mut().enumerate() {
                    *a = [_mm256_loadu_ps(src.add(p * PANEL)), _mm256_loadu_ps(src.add(p * PANEL + 8))];
                }
            }
        }
        let (xp, wp) = (tile.x.as_ptr(), tile.w.as_ptr());
        for c in 0..tile.depth {
            let mut wv = [[_mm256_setzero_ps(); 2]; P];
            for (p, v) in wv.iter_mut().enumerate() {
                let src = wp.add(p * tile.w_stride + c * PANEL);
                *v = [_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8))];
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_ps(*xp.add(c * R + i));
                for (a, v) in acc_i.iter_mut().zip(&wv) {
                    a[0] = _mm256_fmadd_ps(xb, v[0], a[0]);
                    a[1] = _mm256_fmadd_ps(xb, v[1], a[1]);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            let dst = spill.row(y, y_stride, cols, i, false);
            for (p, a) in acc_i.iter().enumerate() {
                _mm256_storeu_ps(dst.add(p * PANEL), a[0]);
                _mm256_storeu_ps(dst.add(p * PANEL + 8), a[1]);
            }
            spill.write_back(y, y_stride, cols, i);
        }
    }
}

/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn portable<const R: usize, const P: usize>(tile: &Tile, y: *mut f32, y_stride: usize, cols: usize) {
    let mut spill = Spill::<R, P> { tile: [[[0.0; PANEL]; P]; R] };
    let mut acc = [[[0f32; PANEL]; P]; R];
    if !tile.first {
        for (i, acc_i) in acc.iter_mut().enumerate() {
            // SAFETY: the caller's contract on y; the row holds P · 16 floats.
            let src = unsafe { std::slice::from_raw_parts(spill.row(y, y_stride, cols, i, true), P * PANEL) };
            acc_i.as_flattened_mut().copy_from_slice(src);
        }
    }
    for c in 0..tile.depth {
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let xv = tile.x[c * R + i];
            for (p, acc_p) in acc_i.iter_mut().enumerate() {
                let wv = &tile.w[p * tile.w_stride + c * PANEL..][..PANEL];
                for (a, w) in acc_p.iter_mut().zip(wv) {
                    *a = super::super::fmadd(xv, *w, *a);
                }
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        // SAFETY: the caller's contract on y; the row holds P · 16 floats.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(spill.row(y, y_stride, cols, i, false), P * PANEL);
            dst.copy_from_slice(acc_i.as_flattened());
            spill.write_back(y, y_stride, cols, i);
        }
    }
}
