//! Next-token choice from logits: greedy, or seeded sampling with repetition penalty,
//! temperature, top-k and top-p applied in transformers' order and with its definitions.

use crate::error::{Error, Result};

/// Sampling parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (the default).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p`; 1 disables.
    pub top_p: f64,
    /// >1 discourages tokens already in the sequence (prompt included, as transformers does).
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Rejects values outside their documented ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid("temperature", format!("{} must be a finite number ≥ 0", self.temperature)));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("topP", format!("{} must be in (0, 1]", self.top_p)));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::invalid("repetitionPenalty", format!("{} must be a finite number > 0", self.repetition_penalty)));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A small, fast, seedable generator (SplitMix64); the same seed gives the same tokens on every
/// platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Scaled logits more than this below the best are never sorted or drawn: each has under
/// e⁻⁴⁰ ≈ 4·10⁻¹⁸ of the best token's probability, a whole 257k vocabulary of them under 10⁻¹².
/// Their mass still counts.
const NEGLIGIBLE: f64 = 40.0;

/// How many of the best candidates are sorted up front. Sorting the whole 257k vocabulary took
/// 22–28 ms per sampled token here, several decode steps on a GPU (3 ms); with a prefix it is
/// 1.4 ms with top-k and about 6 ms on a flat, worst-case distribution.
const PREFIX: usize = 1024;

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token. `history` is every id so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let penalty = p.repetition_penalty as f32;
            let mut seen = vec![false; logits.len()];
            for &id in history {
                if let Some(s) = seen.get_mut(id as usize) {
                    if !*s {
                        *s = true;
                        let l = &mut logits[id as usize];
                        *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                    }
                }
            }
        }
        if p.is_greedy() {
            return argmax(logits);
        }
        // Shift by the largest logit before dividing by the temperature: `(l − max) / t` is ≤ 0,
        // so even a denormal temperature gives 0 for the best token and −∞ for the rest (greedy)
        // instead of overflowing to ∞ − ∞ = NaN.
        let t = p.temperature;
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        // Only tokens within NEGLIGIBLE of the best are sorted; the rest keep their mass in the
        // normalisation and in top-p's sum. NaN logits are never drawn.
        let mut candidates: Vec<(u32, f64)> = Vec::new();
        let mut tail_mass = 0.0;
        for (i, &l) in logits.iter().enumerate() {
            let v = (l as f64 - top) / t;
            if v >= -NEGLIGIBLE {
                candidates.push((i as u32, v));
            } else if !v.is_nan() {
                tail_mass += v.exp();
            }
        }
        if candidates.is_empty() {
            return argmax(logits);
        }
        // Descending by logit; ties keep the lower id first so results are deterministic.
        let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // With top-k the dropped tail is cut anyway, unless fewer than k tokens were kept.
        if p.top_k > 0 && p.top_k <= candidates.len() {
            tail_mass = 0.0;
            if p.top_k < candidates.len() {
                candidates.select_nth_unstable_by(p.top_k - 1, order);
                candidates.truncate(p.top_k);
            }
        }
        // Only the best PREFIX are sorted up front: the draw and the top-p cut nearly always
        // fall among them. The rest is sorted only when one of them does not.
        let mut rest = if candidates.len() > PREFIX {
            candidates.select_nth_unstable_by(PREFIX - 1, order);
            candidates.split_off(PREFIX)
        } else {
            Vec::new()
        };
        candidates.sort_unstable_by(order);
        let max = candidates[0].1;
        let weight = |&(_, l): &(u32, f64)| (l - max).exp();
        let mut probs: Vec<f64> = candidates.iter().map(weight).collect();
        let mut rest_mass: f64 = rest.iter().map(weight).sum::<f64>() + tail_mass / max.exp();
        let sum: f64 = probs.iter().sum::<f64>() + rest_mass;
        probs.iter_mut().for_each(|x| *x /= sum);
        rest_mass /= sum;
        // Moves the rest, sorted, behind the candidates; returns the probability it carried.
        let sort_rest_into = |rest: &mut Vec<(u32, f64)>, candidates: &mut Vec<(u32, f64)>, probs: &mut Vec<f64>| -> f64 {
            let mass = rest.iter().map(|c| weight(c) / sum).sum::<f64>();
            rest.sort_unstable_by(order);
            probs.extend(rest.iter().map(|c| weight(c) / sum));
            candidates.append(rest);
            mass
        };
        if p.top_p < 1.0 {
            // transformers' TopPLogitsWarper: walking up from the least likely token, drop
            // tokens while their cumulative probability is ≤ 1 − top_p; always keep one. The
            // unsorted rest is the bottom of that walk, unless the cut falls inside it.
            if rest_mass > 1.0 - p.top_p && !rest.is_empty() {
                rest_mass -= sort_rest_into(&mut rest, &mut candidates, &mut probs);
            }
            let mut cumulative_from_low = rest_mass;
            let mut keep = probs.len();
            for i in (0..probs.len()).rev() {
                cumulative_from_low += probs[i];
                if cumulative_from_low <= 1.0 - p.top_p {
                    keep = i;
                } else {
                    break;
                }
            }
            let keep = keep.max(1);
            candidates.truncate(keep);
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
            rest.clear();
        }
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        let mut from = 0;
        loop {
            for (i, &pr) in probs.iter().enumerate().skip(from) {
                acc += pr;
                if r < acc {
                    return candidates[i].0;
                }
            }
            if rest.is_empty() {
                return candidates[candidates.len() - 1].0;
            }
            from = probs.len();
            sort_rest_into(&mut rest, &mut candidates, &mut probs);
        }
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`). NaNs never win, and
/// a row with no value above `−∞` gives 0. The maximum is found in 16 lanes (vectorised: this
/// runs once per row of every decode step, over 257 152 logits), then its first index.
pub fn argmax(values: &[f32]) -> u32 {
    const LANES: usize = 16;
    let (chunks, tail) = values.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(*v);
        }
    }
    let max = tail.iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if max == f32::NEG_INFINITY {
        return 0;
    }
    values.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64) -> SamplingParams {
        SamplingParams { temperature, seed: 7, ..Default::default() }
    }

    #[test]
    fn argmax_is_the_first_strictly_largest_value() {
        // The definition the vectorised form must keep: the first index whose value beats all
        // before it, NaNs never winning.
        let reference = |values: &[f32]| {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (i, &v) in values.iter().enumerate() {
                if v > best.1 {
                    best = (i, v);
                }
            }
            best.0 as u32
        };
        let nan = f32::NAN;
        let ninf = f32::NEG_INFINITY;
        let mut long: Vec<f32> = (0..100).map(|i| ((i * 37) % 23) as f32).collect();
        long[90] = 40.0;
        long[95] = 40.0;
        long[3] = nan;
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![nan, nan],
            vec![ninf, ninf, ninf],
            vec![nan, ninf, 1.0, nan],
            vec![-0.0, 0.0],
            vec![0.0, -0.0],
            vec![1.0, f32::INFINITY, 2.0, f32::INFINITY],
            long.clone(),
            long.iter().map(|v| -v).collect(),
        ];
        for values in cases {
            assert_eq!(argmax(&values), reference(&values), "{values:?}");
        }
    }

    #[test]
    fn greedy_picks_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..40).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, ..params(5.0) }).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 0.5, 0.2], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // probabilities ≈ [0.665, 0.245, 0.09]: top_p 0.6 keeps only the first.
        let logits = [2.0f32, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams { top_p: 0.6, ..params(1.0) }).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
        // top_p 0.8 keeps two, never the third.
        let mut s = Sampler::new(SamplingParams { top_p: 0.8, ..params(1.0) }).unwrap();
        let picks: Vec<u32> = (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert!(picks.contains(&1) && !picks.contains(&2));
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }).unwrap();
        let mut logits = [4.0f32, 3.0, -1.0];
        s.sample(&mut logits, &[0, 2, 0]);
        assert_eq!(logits, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn a_tiny_temperature_behaves_like_greedy() {
        let logits = [0.5f32, 2.0, -1.0, 1.9];
        for t in [f64::MIN_POSITIVE * f64::EPSILON, 1e-45, 1e-39, 1e-12] {
            let mut s = Sampler::new(SamplingParams { temperature: t, ..params(1.0) }).unwrap();
            assert_eq!(s.sample(&mut logits.clone(), &[]), 1, "temperature {t}");
        }
    }

    /// The sampler before candidates were pruned: every token sorted, for comparison.
    fn sample_sorting_everything(p: &SamplingParams, rng: &mut Rng, logits: &[f32]) -> u32 {
        let t = p.temperature;
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut candidates: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, (l as f64 - top) / t)).collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.truncate(p.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f64> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut cumulative_from_low = 0.0;
            let mut keep = probs.len();
            for i in (0..probs.len()).rev() {
                cumulative_from_low += probs[i];
                if cumulative_from_low <= 1.0 - p.top_p {
                    keep = i;
                } else {
                    break;
                }
            }
            let keep = keep.max(1);
            candidates.truncate(keep);
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let r = rng.next_f64();
        let mut acc = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return candidates[i].0;
            }
        }
        candidates[candidates.len() - 1].0
    }

    #[test]
    fn pruning_the_tail_draws_what_sorting_everything_draws() {
        // Peaked (a few likely tokens over a long flat tail) and flat vocabularies of 20k.
        let mut gen = Rng::new(11);
        let mut draws = 0;
        for shape in 0..6 {
            let logits: Vec<f32> = (0..20_000)
                .map(|i| {
                    let noise = (gen.next_f64() * 2.0 - 1.0) as f32;
                    match shape % 3 {
                        0 => noise * 2.0 - if i % 97 == 0 { 0.0 } else { 30.0 },
                        1 => noise * 8.0,
                        _ => noise * 60.0,
                    }
                })
                .collect();
            for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.5, 50, 1.0), (1.0, 40, 0.8), (0.3, 0, 0.5), (2.0, 30_000, 0.95)] {
                let params = SamplingParams { temperature, top_k, top_p, seed: shape as u64, ..Default::default() };
                let mut ours = Sampler::new(params.clone()).unwrap();
                let mut rng = Rng::new(params.seed);
                for _ in 0..25 {
                    let want = sample_sorting_everything(&params, &mut rng, &logits);
                    assert_eq!(ours.sample(&mut logits.clone(), &[]), want, "shape {shape}, {params:?}");
                    draws += 1;
                }
            }
        }
        assert_eq!(draws, 6 * 6 * 25);
    }

    #[test]
    fn nan_logits_are_never_drawn_and_all_nan_does_not_panic() {
        let mut s = Sampler::new(params(1.0)).unwrap();
        for _ in 0..50 {
            assert_ne!(s.sample(&mut [f32::NAN, 1.0, 0.5], &[]), 0);
        }
        s.sample(&mut [f32::NAN, f32::NAN], &[]);
        s.sample(&mut [f32::NEG_INFINITY, f32::NEG_INFINITY], &[]);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for bad in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f64::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
        ] {
            let err = Sampler::new(bad).err().expect("must be rejected");
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
        }
    }
}
