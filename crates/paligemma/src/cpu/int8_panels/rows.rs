//! Activation rows rounded to bytes for the int8 kernels, per block of 32 as `q8_0` rounds
//! weights. On AVX-512 a block takes a handful of vector instructions; the scalar loop it
//! replaces was 3–4 % of a 16-row `q8_0` decode step (perf, PaliGemma-3B). Both give the same
//! bytes, scales and sums, which the tests check on ordinary and hostile values.

use rayon::prelude::*;

use super::BLOCK;

/// Activation rows rounded per block of 32 to signed bytes: `x ≈ d · q`, `d = max|x| / 127`,
/// with each block's `−128 · Σq`, which undoes the weights' `+128` offset.
pub(crate) struct QuantizedRows {
    pub(crate) values: Vec<i8>,
    pub(crate) scales: Vec<f32>,
    pub(super) corrections: Vec<i32>,
    pub(crate) k: usize,
}

impl QuantizedRows {
    /// `Σq` of block `index` (row-major over the rows' blocks of 32).
    pub(crate) fn block_sum(&self, index: usize) -> i32 {
        self.corrections[index] / -128
    }

    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> QuantizedRows {
        let kb = k / BLOCK;
        let mut values = vec![0i8; m * k];
        let mut scales = vec![0f32; m * kb];
        let mut corrections = vec![0i32; m * kb];
        let rows = x.chunks_exact(k).zip(values.chunks_exact_mut(k)).zip(scales.chunks_exact_mut(kb).zip(corrections.chunks_exact_mut(kb)));
        if m >= 8 {
            let rows: Vec<_> = rows.collect();
            rows.into_par_iter().for_each(|((x, q), (d, c))| quantize_row(x, q, d, c));
        } else {
            rows.for_each(|((x, q), (d, c))| quantize_row(x, q, d, c));
        }
        QuantizedRows { values, scales, corrections, k }
    }
}

/// One row of [`QuantizedRows`]: its values, and per block its scale and correction.
fn quantize_row(x: &[f32], q: &mut [i8], scales: &mut [f32], corrections: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if super::available() {
        // SAFETY: `available` says this CPU has AVX-512F.
        return unsafe { quantize_row_avx512(x, q, scales, corrections) };
    }
    quantize_row_scalar(x, q, scales, corrections)
}

/// [`quantize_row`] one value at a time: the definition the vector path reproduces.
fn quantize_row_scalar(x: &[f32], q: &mut [i8], scales: &mut [f32], corrections: &mut [i32]) {
    for (((xb, qb), d), c) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(scales).zip(corrections) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 && scale.is_finite() { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            // `as` saturates (and maps NaN to 0): never out of range.
            *q = (v * inv).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        *d = scale;
        *c = -128 * sum;
    }
}

/// [`quantize_row_scalar`] with AVX-512, value for value: the maximum skips NaN as `f32::max`
/// does (`vmaxps` returns its second operand when the first is NaN), products round half to
/// even, and the saturation of `as i8` (±∞ from a subnormal scale's inverse to 127 and −128,
/// NaN to 0) is done by a clamp and a NaN mask.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(x: &[f32], q: &mut [i8], scales: &mut [f32], corrections: &mut [i32]) {
    use std::arch::x86_64::*;
    const HALF: usize = BLOCK / 2;
    for (((xb, qb), d), c) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(scales).zip(corrections) {
        // SAFETY: each block is 32 floats and 32 bytes, read and written as two halves of 16.
        unsafe {
            let halves = [_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(HALF))];
            let zero = _mm512_setzero_ps();
            let most = halves.iter().fold(zero, |a, v| _mm512_max_ps(_mm512_abs_ps(*v), a));
            let scale = _mm512_reduce_max_ps(most) / 127.0;
            let inv = if scale > 0.0 && scale.is_finite() { 1.0 / scale } else { 0.0 };
            let (inv, low, high) = (_mm512_set1_ps(inv), _mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
            let mut sum = _mm512_setzero_si512();
            for (h, v) in halves.iter().enumerate() {
                let product = _mm512_mul_ps(*v, inv);
                let rounded = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(product);
                let clamped = _mm512_min_ps(_mm512_max_ps(rounded, low), high);
                let finite = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(product, product);
                let ints = _mm512_maskz_cvttps_epi32(finite, clamped);
                sum = _mm512_add_epi32(sum, ints);
                _mm_storeu_si128(qb.as_mut_ptr().add(h * HALF).cast(), _mm512_cvtepi32_epi8(ints));
            }
            *d = scale;
            *c = -128 * _mm512_reduce_add_epi32(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 32 that probe every branch: ordinary values, ties of the rounding, NaN beside
    /// numbers, ±∞, all zeros, subnormals (whose scale's inverse overflows to ∞), and values
    /// near f32's largest.
    fn hostile_blocks() -> Vec<f32> {
        let mut x = crate::cpu::test_values(32 * 4, 7).into_iter().map(|v| v * 3.5).collect::<Vec<_>>();
        x.extend((0..32).map(|i| (i as f32 - 16.0) * 0.5)); // 127 · v / 8: ties at every other value
        x.extend((0..32).map(|i| if i % 5 == 0 { f32::NAN } else { i as f32 }));
        x.extend((0..32).map(|i| if i == 9 { f32::INFINITY } else if i == 10 { f32::NEG_INFINITY } else { 1.0 }));
        x.extend([0.0; 32]);
        x.extend([-0.0; 32]);
        x.extend((0..32).map(|i| f32::from_bits(1 + i) * if i % 2 == 0 { 1.0 } else { -1.0 })); // scale 0
        x.extend((0..32).map(|i| (i as f32 - 16.0) * (f32::MIN_POSITIVE / 16.0))); // scale's inverse ∞
        x.extend((0..32).map(|i| f32::MAX * (i as f32 / 31.0 - 0.5)));
        x.extend([f32::NAN; 32]);
        x
    }

    #[test]
    fn the_vector_path_rounds_exactly_as_the_scalar_one() {
        if !super::super::available() {
            eprintln!("skipped: no AVX-512 VNNI here, so the scalar path is the only one");
            return;
        }
        let x = hostile_blocks();
        let kb = x.len() / BLOCK;
        let (mut q1, mut d1, mut c1) = (vec![0i8; x.len()], vec![0f32; kb], vec![0i32; kb]);
        let (mut q2, mut d2, mut c2) = (q1.clone(), d1.clone(), c1.clone());
        quantize_row_scalar(&x, &mut q1, &mut d1, &mut c1);
        // SAFETY: `available` said this CPU has AVX-512F.
        unsafe { quantize_row_avx512(&x, &mut q2, &mut d2, &mut c2) };
        for b in 0..kb {
            let block = b * BLOCK..(b + 1) * BLOCK;
            assert_eq!(q1[block.clone()], q2[block.clone()], "block {b}: {:?}", &x[block]);
            assert_eq!(d1[b].to_bits(), d2[b].to_bits(), "block {b}'s scale");
            assert_eq!(c1[b], c2[b], "block {b}'s correction");
        }
        // The probes reach what they are meant to: saturation at both ends, and NaN to 0.
        assert!(q1.contains(&127) && q1.contains(&-127) && q1.contains(&-128));
        assert_eq!((q1[5 * BLOCK], q1[5 * BLOCK + 1]), (0, 4), "NaN rounds to 0 beside numbers");
        let overflowing = &q1[10 * BLOCK..11 * BLOCK];
        assert!(overflowing[0] == -128 && overflowing[16] == 0 && overflowing[31] == 127, "{overflowing:?}");
    }
}
