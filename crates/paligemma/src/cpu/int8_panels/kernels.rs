//! The register blocks of the int8 panel kernel: `R rows × P panels` of outputs over the whole
//! depth, with AVX-512 VNNI or in plain Rust, the same per-output chain in both (the module
//! above says why).

use super::{Int8Panels, QuantizedRows, BLOCK, BLOCKS_PER_CHUNK, GROUPS, PANEL};
use crate::cpu::tiling::Part;

/// The panels a register block of `r` rows holds (`r` up to 6): `R·P` integer sums, as many f32
/// accumulators, `P` weight registers and two broadcasts fit the 32 AVX-512 registers. One row
/// could take 10 panels, but 4 streams already read the weights at the machine's bandwidth
/// (29–32 GB/s on the bench host, `examples/q8_0_bench`), and 8 read them slower.
pub(super) const PANELS_FOR_ROWS: [usize; 7] = [0, 4, 6, 4, 3, 2, 2];

/// Runs the kernel monomorphised for `part`'s rows × panels over the input blocks `blocks`,
/// writing `y[r0.., p0·16..]` (row stride `n`). The accumulators start from zero for the first
/// blocks, else from what `y` holds (an f32 stored and reloaded is exact, so the chains are
/// unchanged).
///
/// # Safety
/// `y` must hold `x`'s rows × `n` floats, and no other thread may access the part's outputs
/// during the call; `vnni` only where [`super::available`] says so.
pub(super) unsafe fn block(vnni: bool, part: &Part, blocks: std::ops::Range<usize>, x: &QuantizedRows, w: &Int8Panels, y: *mut f32, n: usize) {
    let kb = w.k / BLOCK;
    let Part { rows, r0, row_block, panels, p0, .. } = *part;
    // The first row block reads a chunk's weights from memory, with nothing to overlap them;
    // the second and third fetch the next chunk's into L2 while they compute from L1, so the
    // first finds them there. Measured at 16 rows (`examples/q8_0_bench`, fastest of 9):
    // gate‖up 5.0–5.8 → 4.0–4.6 ms, the LM head 39–46 → 32–35 ms; into L1 instead, little.
    // One row block (up to 6 rows, memory-bound) has no time to spare, and earlier tries that
    // prefetched there lost 8–20 %. (The portable kernel takes the flag and ignores it.)
    let prefetch = matches!(row_block, 1 | 2);
    assert!(
        x.k == w.k && (r0 + rows) * kb <= x.scales.len() && (p0 + panels) * PANEL <= w.n && w.n == n && blocks.end <= kb,
        "int8 panel block out of bounds"
    );
    let y = y.wrapping_add(r0 * n + p0 * PANEL);
    macro_rules! dispatch {
        ($kernel:ident: $(($r:literal, $p:literal)),*) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller; the assertion above bounds the reads.
                $(($r, $p) => unsafe { $kernel::<$r, $p>(x, r0, w, p0, blocks.clone(), y, n, prefetch) },)*
                _ => unreachable!("a block of {rows} rows × {panels} panels"),
            }
        };
    }
    macro_rules! all_blocks {
        ($kernel:ident) => {
            dispatch!($kernel: (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
                (3, 1), (3, 2), (3, 3), (3, 4), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (6, 1), (6, 2))
        };
    }
    #[cfg(target_arch = "x86_64")]
    if vnni {
        return all_blocks!(avx512_vnni);
    }
    let _ = vnni;
    all_blocks!(portable)
}

/// # Safety
/// As [`block`], on a CPU with AVX-512F and AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_vnni<const R: usize, const P: usize>(x: &QuantizedRows, r0: usize, w: &Int8Panels, p0: usize, blocks: std::ops::Range<usize>, y: *mut f32, n: usize, prefetch: bool) {
    use std::arch::x86_64::*;
    let (k, kb) = (w.k, w.k / BLOCK);
    let all_panels = w.n / PANEL;
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: `block` bounds rows r0..r0 + R of x, panels p0..p0 + P and the blocks of w; every
    // offset below stays inside them, but the prefetches', which are checked against w's panels.
    // y is the caller's contract.
    unsafe {
        if blocks.start > 0 {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                for (p, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(y.add(i * n + p * PANEL));
                }
            }
        }
        let xq = x.values.as_ptr().add(r0 * k);
        let (xd, xc) = (x.scales.as_ptr().add(r0 * kb), x.corrections.as_ptr().add(r0 * kb));
        let lines = w.values().as_ptr().add(p0 * kb * GROUPS * 64);
        let scales = w.scales().as_ptr().add(p0 * kb * PANEL * 2);
        for b in blocks {
            if prefetch {
                // The same block of the next chunk; after the last chunk, of the next panels.
                let (ahead_panels, ahead_block) = if b + BLOCKS_PER_CHUNK < kb { (0, b + BLOCKS_PER_CHUNK) } else { (P, b + BLOCKS_PER_CHUNK - kb) };
                if p0 + ahead_panels + P <= all_panels {
                    for p in ahead_panels..ahead_panels + P {
                        for g in 0..GROUPS {
                            let line = lines.add(((p * kb + ahead_block) * GROUPS + g) * 64) as *const i8;
                            _mm_prefetch::<_MM_HINT_T1>(line);
                        }
                        _mm_prefetch::<_MM_HINT_T1>(scales.add((p * kb + ahead_block) * PANEL * 2) as *const i8);
                    }
                }
            }
            let mut sums = [[_mm512_setzero_si512(); P]; R];
            for (i, sums_i) in sums.iter_mut().enumerate() {
                let start = _mm512_set1_epi32(*xc.add(i * kb + b));
                sums_i.iter_mut().for_each(|s| *s = start);
            }
            for g in 0..GROUPS {
                let mut wv = [_mm512_setzero_si512(); P];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(lines.add(((p * kb + b) * GROUPS + g) * 64) as *const __m512i);
                }
                for (i, sums_i) in sums.iter_mut().enumerate() {
                    let four = _mm512_set1_epi32(std::ptr::read_unaligned(xq.add(i * k + b * BLOCK + g * 4) as *const i32));
                    for (s, v) in sums_i.iter_mut().zip(&wv) {
                        *s = _mm512_dpbusd_epi32(*s, *v, four);
                    }
                }
            }
            let mut dw = [_mm512_setzero_ps(); P];
            for (p, d) in dw.iter_mut().enumerate() {
                *d = _mm512_cvtph_ps(_mm256_loadu_si256(scales.add((p * kb + b) * PANEL * 2) as *const __m256i));
            }
            for (i, (acc_i, sums_i)) in acc.iter_mut().zip(&sums).enumerate() {
                let dx = _mm512_set1_ps(*xd.add(i * kb + b));
                for ((a, s), d) in acc_i.iter_mut().zip(sums_i).zip(&dw) {
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), _mm512_mul_ps(*d, dx), *a);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (p, a) in acc_i.iter().enumerate() {
                _mm512_storeu_ps(y.add(i * n + p * PANEL), *a);
            }
        }
    }
}

/// # Safety
/// As [`block`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn portable<const R: usize, const P: usize>(x: &QuantizedRows, r0: usize, w: &Int8Panels, p0: usize, blocks: std::ops::Range<usize>, y: *mut f32, n: usize, _prefetch: bool) {
    let (k, kb) = (w.k, w.k / BLOCK);
    let (values, scales) = (w.values(), w.scales());
    for i in 0..R {
        let row = r0 + i;
        for p in 0..P {
            let panel = p0 + p;
            let mut acc = [0f32; PANEL];
            if blocks.start > 0 {
                // SAFETY: row i of the block, panel p: inside y (the caller's contract).
                unsafe { std::ptr::copy_nonoverlapping(y.add(i * n + p * PANEL), acc.as_mut_ptr(), PANEL) };
            }
            for b in blocks.clone() {
                let xq = &x.values[row * k + b * BLOCK..][..BLOCK];
                let dx = x.scales[row * kb + b];
                for (col, a) in acc.iter_mut().enumerate() {
                    let mut sum = x.corrections[row * kb + b];
                    for g in 0..GROUPS {
                        let line = &values[((panel * kb + b) * GROUPS + g) * 64 + col * 4..][..4];
                        for (j, &wq) in line.iter().enumerate() {
                            sum += i32::from(wq) * i32::from(xq[g * 4 + j]);
                        }
                    }
                    let s = ((panel * kb + b) * PANEL + col) * 2;
                    let dw = half::f16::from_le_bytes([scales[s], scales[s + 1]]).to_f32();
                    *a = super::super::fmadd(sum as f32, dw * dx, *a);
                }
            }
            // SAFETY: row i of the block, panel p: inside y (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add(i * n + p * PANEL), PANEL) };
        }
    }
}
