//! The register blocks of the int4 panel kernel: `R rows × P panels` of outputs over one
//! super-block, with AVX-512 VNNI or in plain Rust, the same per-output chain in both (the
//! module above says why).

use super::{nibble_line, scale_line, Int4Panels, D_LINE, GROUP_LINES, LINES_PER_SUB, PANEL, SUB, SUBS, SUPER};
use crate::cpu::int8_panels::QuantizedRows;
use crate::cpu::tiling::Part;

/// The panels a register block of `r` rows holds (`r` up to 4): `R·P` integer sums and as many
/// f32 accumulators, two unpacked registers and two scale registers per panel, and the
/// broadcasts, within the 32 AVX-512 registers.
pub(super) const PANELS_FOR_ROWS: [usize; 5] = [0, 4, 3, 2, 2];

/// Runs the kernel monomorphised for `part`'s rows × panels over super-block `part.chunk`,
/// writing `y[r0.., p0·16..]` (row stride `n`). The accumulators start from zero for the first
/// super-block, else from what `y` holds.
///
/// # Safety
/// `y` must hold x's rows × `n` floats, and no other thread may access the part's outputs
/// during the call; `vnni` only where [`super::available`] says so.
pub(super) unsafe fn block(vnni: bool, part: &Part, x: &QuantizedRows, w: &Int4Panels, y: *mut f32, n: usize) {
    let Part { rows, r0, panels, p0, chunk: block, .. } = *part;
    assert!(
        x.k == w.k && (r0 + rows) * (w.k / SUB) <= x.scales.len() && (p0 + panels) * PANEL <= w.n && w.n == n && block < w.k / SUPER,
        "int4 panel block out of bounds"
    );
    let y = y.wrapping_add(r0 * n + p0 * PANEL);
    macro_rules! dispatch {
        ($kernel:ident: $(($r:literal, $p:literal)),*) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller; the assertion above bounds the reads.
                $(($r, $p) => unsafe { $kernel::<$r, $p>(x, r0, w, p0, block, y, n) },)*
                _ => unreachable!("a block of {rows} rows × {panels} panels"),
            }
        };
    }
    macro_rules! all_blocks {
        ($kernel:ident) => {
            dispatch!($kernel: (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1), (4, 2))
        };
    }
    #[cfg(target_arch = "x86_64")]
    if vnni {
        return all_blocks!(avx512_vnni);
    }
    let _ = vnni;
    all_blocks!(portable)
}

/// The first line of panel `p`'s super-block `b`.
fn group(w: &Int4Panels, p: usize, b: usize) -> usize {
    (p * (w.k / SUPER) + b) * GROUP_LINES
}

/// # Safety
/// As [`block`], on a CPU with AVX-512F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn avx512_vnni<const R: usize, const P: usize>(x: &QuantizedRows, r0: usize, w: &Int4Panels, p0: usize, b: usize, y: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    let (k, xb) = (w.k, w.k / SUB);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: `block` bounds rows r0..r0 + R of x, panels p0..p0 + P and super-block b of w;
    // every offset below stays inside them. y is the caller's contract.
    unsafe {
        if b > 0 {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                for (p, a) in acc_i.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(y.add(i * n + p * PANEL));
                }
            }
        }
        let low = _mm512_set1_epi8(0x0F);
        let xq = x.values.as_ptr().add(r0 * k + b * SUPER);
        let base = w.lines.as_ptr() as *const u8;
        let line = |p: usize, l: usize| base.add((group(w, p0 + p, b) + l) * 64);
        let mut dv = [_mm512_setzero_ps(); P];
        let mut mv = [_mm512_setzero_ps(); P];
        for p in 0..P {
            dv[p] = _mm512_cvtph_ps(_mm256_loadu_si256(line(p, D_LINE) as *const __m256i));
            mv[p] = _mm512_cvtph_ps(_mm256_loadu_si256(line(p, D_LINE).add(32) as *const __m256i));
        }
        for s in 0..SUBS {
            let mut sums = [[_mm512_setzero_si512(); P]; R];
            for g in 0..LINES_PER_SUB {
                let mut lo = [_mm512_setzero_si512(); P];
                let mut hi = [_mm512_setzero_si512(); P];
                for p in 0..P {
                    let v = _mm512_load_si512(line(p, nibble_line(s, g)) as *const __m512i);
                    lo[p] = _mm512_and_si512(v, low);
                    hi[p] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                }
                for (i, sums_i) in sums.iter_mut().enumerate() {
                    let at = xq.add(i * k + s * SUB + 8 * g);
                    let x0 = _mm512_set1_epi32(std::ptr::read_unaligned(at as *const i32));
                    let x1 = _mm512_set1_epi32(std::ptr::read_unaligned(at.add(4) as *const i32));
                    for p in 0..P {
                        sums_i[p] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sums_i[p], lo[p], x0), hi[p], x1);
                    }
                }
            }
            let mut dd = [_mm512_setzero_ps(); P];
            let mut mm = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let scales = line(p, scale_line(s)).add(32 * (s % 2));
                let widen = |bytes: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(bytes as *const __m128i)));
                dd[p] = _mm512_mul_ps(dv[p], widen(scales));
                mm[p] = _mm512_mul_ps(mv[p], widen(scales.add(16)));
            }
            for (i, (acc_i, sums_i)) in acc.iter_mut().zip(&sums).enumerate() {
                let blk = (r0 + i) * xb + b * SUBS + s;
                let dx = _mm512_set1_ps(x.scales[blk]);
                let sx = _mm512_set1_ps(x.block_sum(blk) as f32);
                for p in 0..P {
                    acc_i[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums_i[p]), _mm512_mul_ps(dd[p], dx), acc_i[p]);
                    acc_i[p] = _mm512_fnmadd_ps(_mm512_mul_ps(mm[p], dx), sx, acc_i[p]);
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
unsafe fn portable<const R: usize, const P: usize>(x: &QuantizedRows, r0: usize, w: &Int4Panels, p0: usize, b: usize, y: *mut f32, n: usize) {
    let (k, xb) = (w.k, w.k / SUB);
    for i in 0..R {
        let row = r0 + i;
        for p in 0..P {
            let lines = w.group(p0 + p, b);
            let mut acc = [0f32; PANEL];
            if b > 0 {
                // SAFETY: row i of the block, panel p: inside y (the caller's contract).
                unsafe { std::ptr::copy_nonoverlapping(y.add(i * n + p * PANEL), acc.as_mut_ptr(), PANEL) };
            }
            for s in 0..SUBS {
                let blk = row * xb + b * SUBS + s;
                let (dx, sx) = (x.scales[blk], x.block_sum(blk) as f32);
                let xq = &x.values[row * k + b * SUPER + s * SUB..][..SUB];
                for (col, a) in acc.iter_mut().enumerate() {
                    let mut sum = 0i32;
                    for g in 0..LINES_PER_SUB {
                        let line = &lines[nibble_line(s, g)].0[col * 4..][..4];
                        for (j, &byte) in line.iter().enumerate() {
                            sum += i32::from(byte & 0xF) * i32::from(xq[8 * g + j]) + i32::from(byte >> 4) * i32::from(xq[8 * g + 4 + j]);
                        }
                    }
                    let (dd, mm) = super::sub_block_scales(lines, s, col);
                    *a = crate::cpu::fmadd(sum as f32, dd * dx, *a);
                    *a = crate::cpu::fmadd(-(mm * dx), sx, *a);
                }
            }
            // SAFETY: row i of the block, panel p: inside y (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add(i * n + p * PANEL), PANEL) };
        }
    }
}
