//! Attention for one query per sequence (a decode step), without gemm.
//!
//! Why: through gemm each of a 16-row step's 8 × 16 query heads paid two small products of its
//! own (`1 × 256 · 256 × S`, then `1 × S · S × 256`), and that was 8 % of a `q8_0` step on
//! PaliGemma-3B (perf). Here one task per (sequence, KV head) reads each key and value row once
//! for all the query heads that share it (spec §2.4), four keys at a time for the dot products.
//! 18 layers of a 16-row step with 300 positions of cache per row, the caches read from memory
//! (`examples/attn_probe`, fastest of 20, four alternating runs each): 12.6–12.9 ms, against
//! 15.7–18.9 ms through gemm. The floor is the caches' 173 MB at the memory's ~30 GB/s, 6 ms.
//!
//! Every score is one fixed chain (16 lanes over the head dimension in order, the lanes summed
//! in a fixed tree, then the leftover dimensions in order), and every output one chain over the
//! keys in order, so a row's bits do not depend on the batch, the threads or the grouping.
//! Keys its mask hides (`−∞`) are not multiplied at all: their score is `−∞` and their weight
//! exactly 0, as the full products would give for finite caches.

use super::super::fmadd;

const LANES: usize = 16;
/// Keys per dot-product block: four chains of 16 lanes keep the FMA units busy.
const KEYS: usize = 4;

/// Raw scores of the query heads `queries` (`[heads, h]`) against `keys` (`s` rows of `h`) into
/// `out` (`[heads, s]`), `−∞` where `mask` is: keys in blocks of four, every head's products for
/// a block done while its rows are in L1 (the cache's rows stream from memory once per step).
pub(super) fn scores(queries: &[f32], keys: &[f32], h: usize, s: usize, mask: Option<&[f32]>, out: &mut [f32]) {
    let hidden = |j: usize| mask.is_some_and(|m| m[j] == f32::NEG_INFINITY);
    let key = |j: usize| &keys[j * h..][..h];
    let mut j = 0;
    while j < s {
        let block = KEYS.min(s - j);
        let whole = block == KEYS && !(j..j + KEYS).any(hidden);
        for (q, row) in queries.chunks_exact(h).zip(out.chunks_exact_mut(s)) {
            if whole {
                row[j..j + KEYS].copy_from_slice(&dots::<KEYS>(q, std::array::from_fn(|i| key(j + i))));
            } else {
                for (i, score) in row.iter_mut().enumerate().skip(j).take(block) {
                    *score = if hidden(i) { f32::NEG_INFINITY } else { dots::<1>(q, [key(i)])[0] };
                }
            }
        }
        j += block;
    }
}

/// `N` dot products of `q` with `keys`, each the same chain whatever `N` is: lane `l` sums
/// dimensions `l, l + 16, …` with FMAs, the lanes are summed in a fixed tree, then the leftover
/// dimensions follow in order. Written with AVX2 intrinsics where the build has FMA (the
/// compiler kept the portable form in scalar registers, 4× slower than gemm), else portably;
/// both are the same operations in the same order.
#[inline(always)]
fn dots<const N: usize>(q: &[f32], keys: [&[f32]; N]) -> [f32; N] {
    assert!(keys.iter().all(|k| k.len() >= q.len()), "a key shorter than the query");
    #[cfg(all(target_arch = "x86_64", target_feature = "fma"))]
    {
        // SAFETY: every load below is inside q or a key (asserted as long as q).
        unsafe { dots_fma(q, keys) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "fma")))]
    dots_portable(q, keys)
}

#[cfg(all(target_arch = "x86_64", target_feature = "fma"))]
#[inline(always)]
unsafe fn dots_fma<const N: usize>(q: &[f32], keys: [&[f32]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let whole = q.len() / LANES * LANES;
    // SAFETY: the caller's contract: offsets below `whole` ≤ q.len() ≤ each key's length.
    unsafe {
        let mut low = [_mm256_setzero_ps(); N];
        let mut high = [_mm256_setzero_ps(); N];
        for c in (0..whole).step_by(LANES) {
            let (ql, qh) = (_mm256_loadu_ps(q.as_ptr().add(c)), _mm256_loadu_ps(q.as_ptr().add(c + 8)));
            for i in 0..N {
                let k = keys[i].as_ptr().add(c);
                low[i] = _mm256_fmadd_ps(ql, _mm256_loadu_ps(k), low[i]);
                high[i] = _mm256_fmadd_ps(qh, _mm256_loadu_ps(k.add(8)), high[i]);
            }
        }
        std::array::from_fn(|i| {
            let half = _mm256_add_ps(low[i], high[i]);
            let quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps::<1>(half));
            let pair = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
            let mut sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)));
            for d in whole..q.len() {
                sum = fmadd(q[d], keys[i][d], sum);
            }
            sum
        })
    }
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "fma"), allow(dead_code))]
fn dots_portable<const N: usize>(q: &[f32], keys: [&[f32]; N]) -> [f32; N] {
    let whole = q.len() / LANES * LANES;
    std::array::from_fn(|i| {
        let mut lanes = [0f32; LANES];
        for c in (0..whole).step_by(LANES) {
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane = fmadd(q[c + l], keys[i][c + l], *lane);
            }
        }
        let half: [f32; 8] = std::array::from_fn(|l| lanes[l] + lanes[l + 8]);
        let quarter: [f32; 4] = std::array::from_fn(|l| half[l] + half[l + 4]);
        let mut sum = (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
        for d in whole..q.len() {
            sum = fmadd(q[d], keys[i][d], sum);
        }
        sum
    })
}

/// `out[g] = Σⱼ weights[g][j] · values[j]` for the query heads of one KV head (`weights` is
/// `[heads, s]`, `values` `[s, h]`, `out` `[heads, h]`): each output one FMA chain over the keys
/// in order, zero weights (hidden keys) skipped. Value rows are read in order, once each (as
/// blocks of dimensions across all rows, the reads were strided and latency-bound).
pub(super) fn weighted_values(weights: &[f32], values: &[f32], h: usize, s: usize, out: &mut [f32]) {
    assert!(values.len() >= s * h && weights.len() * h == out.len() * s, "weighted values out of bounds");
    out.fill(0.0);
    for j in 0..s {
        let v = &values[j * h..][..h];
        for (o, w) in out.chunks_exact_mut(h).zip(weights.chunks_exact(s)) {
            if w[j] != 0.0 {
                axpy(w[j], v, o);
            }
        }
    }
}

/// `o += w · v`, fused, element by element.
#[inline(always)]
fn axpy(w: f32, v: &[f32], o: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "fma"))]
    {
        use std::arch::x86_64::*;
        let whole = v.len().min(o.len()) / 8 * 8;
        // SAFETY: offsets below `whole`, in both slices.
        unsafe {
            let wv = _mm256_set1_ps(w);
            for d in (0..whole).step_by(8) {
                let p = o.as_mut_ptr().add(d);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.as_ptr().add(d)), _mm256_loadu_ps(p)));
            }
        }
        o[whole..].iter_mut().zip(&v[whole..]).for_each(|(o, v)| *o = fmadd(w, *v, *o));
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "fma")))]
    o.iter_mut().zip(v).for_each(|(o, v)| *o = fmadd(w, *v, *o));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_forms_are_the_portable_ones_bit_for_bit() {
        // h: leftover dimensions only, whole lanes and blocks only, and both.
        for h in [8usize, 64, 72, 256, 270] {
            let s = 9;
            let q = crate::cpu::test_values(h, h as u32);
            let keys = crate::cpu::test_values(s * h, 3 * h as u32);
            let key = |j: usize| &keys[j * h..][..h];
            let four = dots::<4>(&q, std::array::from_fn(key));
            for j in 0..s {
                let single = dots::<1>(&q, [key(j)])[0];
                assert_eq!(single.to_bits(), dots_portable::<1>(&q, [key(j)])[0].to_bits(), "h {h} key {j}");
                if let Some(in_four) = four.get(j) {
                    assert_eq!(single.to_bits(), in_four.to_bits(), "h {h} key {j}: alone and in a block of four");
                }
            }
            let heads = 3;
            let mut weights = crate::cpu::test_values(heads * s, 5);
            weights[4] = 0.0;
            let mut out = vec![1f32; heads * h];
            weighted_values(&weights, &keys, h, s, &mut out);
            for (g, o) in out.chunks_exact(h).enumerate() {
                for (d, got) in o.iter().enumerate() {
                    let want = (0..s).filter(|&j| weights[g * s + j] != 0.0).fold(0f32, |acc, j| fmadd(weights[g * s + j], keys[j * h + d], acc));
                    assert_eq!(got.to_bits(), want.to_bits(), "h {h} head {g} dimension {d}");
                }
            }
        }
    }
}
