//! The register blocks of the bf16 panel kernel: `R rows × P panels` of f32 sums over a range of
//! input pairs, with AVX512-BF16 or in plain Rust, the same per-output chain in both (the module
//! above says why).

use super::{bf16_value, Bf16Panels, Bf16Rows, PANEL};
use crate::cpu::tiling::Part;

/// The panels a register block of `r` rows holds (`r` up to 6): `R·P` accumulators, `P` weight
/// registers and a broadcast fit the 32 AVX-512 registers. One row takes 4 panels: decode is
/// bound by memory, and 4 streams already read at its bandwidth.
pub(super) const PANELS_FOR_ROWS: [usize; 7] = [0, 4, 8, 6, 5, 4, 4];

/// Runs the kernel monomorphised for `part`'s rows × panels over the input pairs `pairs`,
/// writing `y[r0.., p0·16..]` (row stride the padded width). The sums start from zero for the
/// first pairs, else from what `y` holds.
///
/// # Safety
/// `y` must hold x's rows × `stride` floats (`stride` = w's panels × 16), and no other thread
/// may access the part's outputs during the call; `native` only where [`super::available`]
/// says so.
pub(super) unsafe fn block(native: bool, part: &Part, range: std::ops::Range<usize>, x: &Bf16Rows, w: &Bf16Panels, y: *mut f32, stride: usize) {
    let pairs = Bf16Panels::pairs(w.k);
    let Part { rows, r0, panels, p0, .. } = *part;
    assert!(
        x.per_row == pairs
            && (r0 + rows) * pairs <= x.pairs.len()
            && (p0 + panels) * pairs <= w.lines.len()
            && stride == w.n.div_ceil(PANEL) * PANEL
            && range.end <= pairs,
        "bf16 panel block out of bounds"
    );
    let y = y.wrapping_add(r0 * stride + p0 * PANEL);
    macro_rules! dispatch {
        ($kernel:ident: $(($r:literal, $p:literal)),*) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller; the assertion above bounds the reads.
                $(($r, $p) => unsafe { $kernel::<$r, $p>(x, r0, w, p0, range.clone(), y, stride) },)*
                _ => unreachable!("a block of {rows} rows × {panels} panels"),
            }
        };
    }
    macro_rules! all_blocks {
        ($kernel:ident) => {
            dispatch!($kernel: (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6), (2, 7), (2, 8),
                (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6), (4, 1), (4, 2), (4, 3), (4, 4), (4, 5),
                (5, 1), (5, 2), (5, 3), (5, 4), (6, 1), (6, 2), (6, 3), (6, 4))
        };
    }
    #[cfg(target_arch = "x86_64")]
    if native {
        return all_blocks!(avx512_bf16);
    }
    let _ = native;
    all_blocks!(portable)
}

/// # Safety
/// As [`block`], on a CPU with AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_bf16<const R: usize, const P: usize>(x: &Bf16Rows, r0: usize, w: &Bf16Panels, p0: usize, range: std::ops::Range<usize>, y: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let pairs = Bf16Panels::pairs(w.k);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: `block` bounds rows r0..r0 + R of x, panels p0..p0 + P and the pairs of w; every
    // offset below stays inside them. y is the caller's contract.
    unsafe {
        if range.start > 0 {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                for (p, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(y.add(i * stride + p * PANEL));
                }
            }
        }
        let xp = x.pairs.as_ptr().add(r0 * pairs);
        let lines = w.lines.as_ptr().add(p0 * pairs);
        for c in range {
            let mut wv = [_mm512_setzero_si512(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_load_si512(lines.add(p * pairs + c) as *const __m512i);
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let two: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(c * R + i) as i32));
                for (a, v) in acc_i.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, std::mem::transmute::<__m512i, __m512bh>(*v), two);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (p, a) in acc_i.iter().enumerate() {
                _mm512_storeu_ps(y.add(i * stride + p * PANEL), *a);
            }
        }
    }
}

/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn portable<const R: usize, const P: usize>(x: &Bf16Rows, r0: usize, w: &Bf16Panels, p0: usize, range: std::ops::Range<usize>, y: *mut f32, stride: usize) {
    let pairs = Bf16Panels::pairs(w.k);
    for i in 0..R {
        for p in 0..P {
            let mut acc = [0f32; PANEL];
            if range.start > 0 {
                // SAFETY: row i of the block, panel p: inside y (the caller's contract).
                unsafe { std::ptr::copy_nonoverlapping(y.add(i * stride + p * PANEL), acc.as_mut_ptr(), PANEL) };
            }
            for c in range.clone() {
                let two = x.pairs[r0 * pairs + c * R + i];
                let (x_even, x_odd) = (bf16_value(two as u16), bf16_value((two >> 16) as u16));
                let line = &w.lines[(p0 + p) * pairs + c].0;
                for (col, a) in acc.iter_mut().enumerate() {
                    // `vdpbf16ps`'s order: the odd product first. Each product of two bf16 is
                    // exact in f32, so each step is one rounding, as in the instruction.
                    *a += bf16_value(line[col * 2 + 1]) * x_odd;
                    *a += bf16_value(line[col * 2]) * x_even;
                }
            }
            // SAFETY: row i of the block, panel p: inside y (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add(i * stride + p * PANEL), PANEL) };
        }
    }
}
