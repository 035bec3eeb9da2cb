//! Attention for one query per sequence (a decode step), without gemm.
//!
//! Why: through gemm each of a 16-row step's 8 × 16 query heads paid two small products of its
//! own (`1 × 256 · 256 × S`, then `1 × S · S × 256`), and that was 8 % of a `q8_0` step on
//! PaliGemma-3B (perf). Here one task per (sequence, KV head) reads each key and value row once
//! for all the query heads that share it (spec §2.4), four keys at a time for the dot products.
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

/// Raw scores `q·kⱼ` of one query against `keys` (`s` rows of `h`), `−∞` where `mask` is.
pub(super) fn scores(q: &[f32], keys: &[f32], h: usize, mask: Option<&[f32]>, out: &mut [f32]) {
    let hidden = |j: usize| mask.is_some_and(|m| m[j] == f32::NEG_INFINITY);
    let key = |j: usize| &keys[j * h..][..h];
    let mut j = 0;
    let s = out.len();
    while j + KEYS <= s {
        if (j..j + KEYS).any(hidden) {
            singles(q, &key, &hidden, j..j + KEYS, out);
        } else {
            let dots = dots::<KEYS>(q, std::array::from_fn(|i| key(j + i)));
            out[j..j + KEYS].copy_from_slice(&dots);
        }
        j += KEYS;
    }
    singles(q, &key, &hidden, j..s, out);
}

fn singles<'a>(q: &[f32], key: &impl Fn(usize) -> &'a [f32], hidden: &impl Fn(usize) -> bool, range: std::ops::Range<usize>, out: &mut [f32]) {
    for j in range {
        out[j] = if hidden(j) { f32::NEG_INFINITY } else { dots::<1>(q, [key(j)])[0] };
    }
}

/// `N` dot products of `q` with `keys`, each the same chain whatever `N` is.
#[inline(always)]
fn dots<const N: usize>(q: &[f32], keys: [&[f32]; N]) -> [f32; N] {
    let (q_lanes, q_rest) = q.as_chunks::<LANES>();
    let mut acc = [[0f32; LANES]; N];
    let k_lanes: [&[[f32; LANES]]; N] = keys.map(|k| k.as_chunks::<LANES>().0);
    for (c, ql) in q_lanes.iter().enumerate() {
        for (a, k) in acc.iter_mut().zip(&k_lanes) {
            let kl = &k[c];
            for l in 0..LANES {
                a[l] = fmadd(ql[l], kl[l], a[l]);
            }
        }
    }
    let done = q_lanes.len() * LANES;
    std::array::from_fn(|i| {
        let a = &acc[i];
        let mut half = [0f32; LANES / 2];
        (0..LANES / 2).for_each(|l| half[l] = a[l] + a[l + LANES / 2]);
        let quarter: [f32; 4] = std::array::from_fn(|l| half[l] + half[l + 4]);
        let mut sum = (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
        for (d, qd) in q_rest.iter().enumerate() {
            sum = fmadd(*qd, keys[i][done + d], sum);
        }
        sum
    })
}

/// `out[g] = Σⱼ weights[g][j] · values[j]` for the `groups` query heads of one KV head, over the
/// keys in order; zero weights (hidden keys) are skipped.
pub(super) fn weighted_values(weights: &[f32], values: &[f32], h: usize, s: usize, out: &mut [f32]) {
    out.fill(0.0);
    for j in 0..s {
        let v = &values[j * h..][..h];
        for (o, w) in out.chunks_exact_mut(h).zip(weights.chunks_exact(s)) {
            let w = w[j];
            if w != 0.0 {
                o.iter_mut().zip(v).for_each(|(o, v)| *o = fmadd(w, *v, *o));
            }
        }
    }
}
