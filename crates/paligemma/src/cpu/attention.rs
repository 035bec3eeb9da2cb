//! Scaled dot-product attention on the CPU, one rayon task per (batch, query head).
//!
//! Why: through candle, SigLIP's attention (16 heads of 256×72) took 28 ms per layer at
//! 2 threads for 0.3 GFLOP, because every op (batched matmul over a transposed view, mask,
//! softmax, transpose) is a separate pass with its own threading; 27 layers made it 0.8 s of the
//! time to first token. Here each head does `q·kᵀ`, soft-cap, mask and softmax on its own score
//! block while it is in cache, then `p·v`, with gemm's single-threaded kernels, and the heads
//! run in parallel. K and V are read in place from the KV cache (any batch/head strides, rows
//! of `H` contiguous floats), and query heads share their KV head without copies (spec §2.4).

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::activation::{exp, tanh};
use crate::error::Result;

mod decode;

/// A `[B, heads, S, H]` view whose rows are `H` contiguous floats.
struct Rows<'a> {
    data: &'a [f32],
    batch_stride: usize,
    head_stride: usize,
    rows: usize,
}

impl Rows<'_> {
    /// The `rows × H` block of `(b, head)`, as a slice starting at its first element.
    fn block(&self, b: usize, head: usize, h: usize) -> &[f32] {
        let start = b * self.batch_stride + head * self.head_stride;
        &self.data[start..start + (self.rows - 1) * h + h]
    }
}

/// `q: [B, N, T, H]`, `k, v: [B, K, S, H]` (K divides N) and an additive `[T, S]` mask (or
/// `[B, T, S]`, one per sequence), all f32 on the CPU → `[B, T, N·H]`. `softcap` applies `cap·tanh(·)` to the scores before the mask (q
/// already carries `scale / cap`). `None` when the inputs are not f32 CPU tensors with
/// unit-stride rows, and the caller falls back to candle.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    let all = [Some(q), Some(k), Some(v), mask];
    if all
        .iter()
        .flatten()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32)
    {
        return Ok(None);
    }
    let (b, n, t, h) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    if kv == 0 || n % kv != 0 || v.dims4()? != (b, kv, s, h) || k.dims4()? != (b, kv, s, h) {
        return Ok(None);
    }
    let group = n / kv;
    let q = q.contiguous()?;
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    // One `[T, S]` mask for every sequence, or one per sequence, `[B, T, S]`.
    let per_sequence = match mask.as_ref().map(|m| m.dims()) {
        None => false,
        Some(dims) if dims == [t, s] => false,
        Some(dims) if dims == [b, t, s] => true,
        Some(_) => return Ok(None),
    };
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let mask_guard = mask.as_ref().map(|m| m.storage_and_layout());
    let (Storage::Cpu(q_cpu), Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) =
        (&*q_storage, &*k_storage, &*v_storage)
    else {
        return Ok(None);
    };
    // (offset, batch stride, head stride) of a view whose rows are H contiguous floats.
    let rows = |layout: &candle_core::Layout| {
        let st = layout.stride();
        (st[3] == 1 && (s == 1 || st[2] == h)).then(|| (layout.start_offset(), st[0], st[1]))
    };
    let (Some((k_off, k_bs, k_hs)), Some((v_off, v_bs, v_hs))) = (rows(k_layout), rows(v_layout))
    else {
        return Ok(None);
    };
    let q_data = &q_cpu.as_slice::<f32>()?[q_layout.start_offset()..][..b * n * t * h];
    let keys = Rows {
        data: &k_cpu.as_slice::<f32>()?[k_off..],
        batch_stride: k_bs,
        head_stride: k_hs,
        rows: s,
    };
    let values = Rows {
        data: &v_cpu.as_slice::<f32>()?[v_off..],
        batch_stride: v_bs,
        head_stride: v_hs,
        rows: s,
    };
    let mask_data = match &mask_guard {
        Some((storage, layout)) => match &**storage {
            Storage::Cpu(cpu) => Some(&cpu.as_slice::<f32>()?[layout.start_offset()..][..if per_sequence { b } else { 1 } * t * s]),
            _ => return Ok(None),
        },
        None => None,
    };
    let cap = softcap.map(|c| c as f32);

    let mask_of = |bi: usize| mask_data.map(|m| if per_sequence { &m[bi * t * s..][..t * s] } else { m });

    if t == 1 {
        // A decode step: one task per (sequence, KV head), its query heads together
        // (`decode`), or a share of them when that leaves threads idle (a single sequence);
        // [B, N, 1, H] is already [B, 1, N·H].
        let split = rayon::current_num_threads().div_ceil(b * kv).clamp(1, group);
        let per_task = (group.div_ceil(split)..=group).find(|p| group % p == 0).unwrap_or(group);
        let mut out = vec![0f32; b * n * h];
        out.par_chunks_mut(per_task * h).enumerate().for_each(|(task, out_heads)| {
            let first = task * per_task;
            let (bi, kv_head) = (first / n, first % n / group);
            let (k_h, v_h) = (keys.block(bi, kv_head, h), values.block(bi, kv_head, h));
            let mask_row = mask_of(bi);
            let mut weights = vec![0f32; per_task * s];
            decode::scores(&q_data[first * h..][..per_task * h], k_h, h, s, mask_row, &mut weights);
            weights.chunks_exact_mut(s).for_each(|row| normalize(row, cap, mask_row));
            decode::weighted_values(&weights, v_h, h, s, out_heads);
        });
        return Ok(Some(Tensor::from_vec(out, (b, 1, n * h), &Device::Cpu)?));
    }

    // Per (batch, head): [T, H] of output, head-major; merged to [B, T, N·H] at the end.
    let mut out = vec![0f32; b * n * t * h];
    out.par_chunks_mut(t * h)
        .enumerate()
        .for_each(|(task, out_h)| {
            let (bi, head) = (task / n, task % n);
            let q_h = &q_data[task * t * h..][..t * h];
            let k_h = keys.block(bi, head / group, h);
            let v_h = values.block(bi, head / group, h);
            let mut scores = vec![0f32; t * s];
            let mask_h = mask_of(bi);
            // scores [t, s] = q_h [t, h] · kᵀ, where kᵀ [h, s] is k_h's rows read as columns.
            super::product(&mut scores, (s, 1), q_h, (h, 1), k_h, (1, h), (t, s, h));
            for (row, scores_row) in scores.chunks_exact_mut(s).enumerate() {
                normalize(scores_row, cap, mask_h.map(|m| &m[row * s..][..s]));
            }
            // out_h [t, h] = p [t, s] · v_h [s, h].
            super::product(out_h, (h, 1), &scores, (s, 1), v_h, (h, 1), (t, h, s));
        });
    let out = Tensor::from_vec(out, (b, n, t, h), &Device::Cpu)?;
    Ok(Some(out.transpose(1, 2)?.reshape((b, t, n * h))?))
}


/// One query's raw scores → weights: the soft-cap, the additive mask, then the softmax.
fn normalize(scores: &mut [f32], cap: Option<f32>, mask: Option<&[f32]>) {
    if let Some(cap) = cap {
        scores.iter_mut().for_each(|x| *x = cap * tanh(*x));
    }
    if let Some(m) = mask {
        scores.iter_mut().zip(m).for_each(|(x, m)| *x += m);
    }
    softmax_in_place(scores);
}

/// Softmax of one row in f32; `−∞` entries (masked keys) get exactly zero weight. Written as
/// 16 independent lanes so that the max, the exponentials and the sum vectorise.
fn softmax_in_place(row: &mut [f32]) {
    const LANES: usize = 16;
    let (blocks, tail) = row.as_chunks::<LANES>();
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    for b in blocks {
        for l in 0..LANES {
            lane_max[l] = lane_max[l].max(b[l]);
        }
    }
    let max = tail.iter().chain(&lane_max).copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |x: f32| if x == f32::NEG_INFINITY { 0.0 } else { exp(x - max) };
    let (blocks, tail) = row.as_chunks_mut::<LANES>();
    let mut lane_sum = [0f32; LANES];
    for b in blocks.iter_mut() {
        for l in 0..LANES {
            b[l] = weight(b[l]);
            lane_sum[l] += b[l];
        }
    }
    let mut sum: f32 = lane_sum.iter().sum();
    for x in tail.iter_mut() {
        *x = weight(*x);
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention through candle ops, one query head at a time (K/V head `n / group`).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, cap: Option<f64>) -> Result<Tensor> {
        let (b, n, t, h) = q.dims4()?;
        let kv = k.dim(1)?;
        let mut heads = Vec::new();
        for head in 0..n {
            let qh = q.narrow(1, head, 1)?;
            let kh = k.narrow(1, head / (n / kv), 1)?;
            let vh = v.narrow(1, head / (n / kv), 1)?;
            let mut s = qh.matmul(&kh.t()?)?;
            if let Some(c) = cap {
                s = (s.tanh()? * c)?;
            }
            if let Some(m) = mask {
                s = if m.rank() == 3 { s.broadcast_add(&m.unsqueeze(1)?)? } else { s.broadcast_add(m)? };
            }
            heads.push(candle_nn::ops::softmax_last_dim(&s)?.matmul(&vh)?);
        }
        Ok(Tensor::cat(&heads, 1)?.transpose(1, 2)?.reshape((b, t, n * h))?)
    }

    #[test]
    fn attention_matches_candle_ops_with_gqa_softcap_mask_and_strided_cache() -> Result<()> {
        let dev = Device::Cpu;
        let (b, n, kv, t, h, cap) = (2, 4, 2, 3, 8, 5usize);
        let q = Tensor::randn(0f32, 1.0, (b, n, t, h), &dev)?;
        // K/V as narrowed views of a larger cache: rows contiguous, heads `cap` rows apart.
        let k_cache = Tensor::randn(0f32, 1.0, (b, kv, cap, h), &dev)?;
        let v_cache = Tensor::randn(0f32, 1.0, (b, kv, cap, h), &dev)?;
        let s = 4;
        let (k, v) = (k_cache.narrow(2, 0, s)?, v_cache.narrow(2, 0, s)?);
        assert!(!k.is_contiguous());
        let mask = Tensor::new(&[[0f32, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY], [0.0, 0.0, 0.0, f32::NEG_INFINITY], [0.0; 4]], &dev)?;
        // One mask per sequence: the second sees only its last key in every row.
        let last_only = Tensor::new(&[[f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]; 3], &dev)?;
        let per_sequence = Tensor::stack(&[&mask, &last_only], 0)?;
        for (m, c) in [(None, None), (Some(&mask), None), (Some(&mask), Some(2.5)), (Some(&per_sequence), Some(2.5))] {
            let ours = attend(&q, &k, &v, m, c)?.expect("f32 CPU inputs qualify");
            let want = reference(&q, &k.contiguous()?, &v.contiguous()?, m, c)?;
            let diff = (ours - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "mask {:?} cap {c:?}: {diff}", m.map(|m| m.dims().to_vec()));
        }
        // The second sequence's output is its last value row, per head: its mask was applied.
        let ours = attend(&q, &k, &v, Some(&per_sequence), None)?.expect("f32 CPU inputs qualify");
        let last = v.narrow(2, s - 1, 1)?.narrow(0, 1, 1)?.contiguous()?; // [1, kv, 1, h]
        let want = Tensor::cat(&(0..n).map(|head| last.narrow(1, head / (n / kv), 1)).collect::<candle_core::Result<Vec<_>>>()?, 3)?;
        let diff = (ours.narrow(0, 1, 1)?.narrow(1, 0, 1)? - want.reshape((1, 1, n * h))?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "the second sequence's own mask: {diff}");
        // Other dtypes are left to candle.
        assert!(attend(&q.to_dtype(DType::F16)?, &k.to_dtype(DType::F16)?, &v.to_dtype(DType::F16)?, None, None)?.is_none());
        Ok(())
    }

    #[test]
    fn one_query_steps_match_candle_ops_and_do_not_depend_on_the_batch() -> Result<()> {
        // Head sizes of only leftover dimensions, only whole lanes, and both; 7 keys, so the
        // blocks of four and the single keys both run; query heads in groups of 4 per KV head.
        let dev = Device::Cpu;
        let (b, n, kv, s) = (3, 8, 2, 7);
        for h in [8, 32, 40] {
            let q = Tensor::randn(0f32, 1.0, (b, n, 1, h), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, kv, s, h), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, kv, s, h), &dev)?;
            let ninf = f32::NEG_INFINITY;
            let shared = Tensor::new(&[[0f32, 0.0, ninf, 0.0, 0.0, 0.0, ninf]], &dev)?;
            let per_sequence = Tensor::new(&[[[0f32; 7]], [[ninf, ninf, ninf, ninf, 0.0, 0.0, ninf]], [[0.0, ninf, 0.0, 0.0, 0.0, 0.0, 0.0]]], &dev)?;
            for (m, c) in [(None, None), (Some(&shared), None), (Some(&per_sequence), None), (Some(&per_sequence), Some(2.5))] {
                let ours = attend(&q, &k, &v, m, c)?.expect("f32 CPU inputs qualify");
                let want = reference(&q, &k, &v, m, c)?;
                let diff = (&ours - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "h {h}, mask {:?} cap {c:?}: {diff}", m.map(|m| m.dims().to_vec()));
                // Sequence 1 alone gives the same bits as inside the batch.
                let one = |t: &Tensor| t.narrow(0, 1, 1);
                let alone_mask = m.map(|m| if m.rank() == 3 { one(m) } else { Ok(m.clone()) }).transpose()?;
                let alone = attend(&one(&q)?, &one(&k)?, &one(&v)?, alone_mask.as_ref(), c)?.expect("f32 CPU inputs qualify");
                assert_eq!(one(&ours)?.flatten_all()?.to_vec1::<f32>()?, alone.flatten_all()?.to_vec1::<f32>()?, "h {h}: alone and in a batch");
                // With more threads than (sequence, KV head) pairs the query heads are split
                // across tasks: the same bits again.
                let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build().expect("a thread pool");
                let split = pool.install(|| attend(&one(&q)?, &one(&k)?, &one(&v)?, alone_mask.as_ref(), c))?.expect("f32 CPU inputs qualify");
                assert_eq!(split.flatten_all()?.to_vec1::<f32>()?, alone.flatten_all()?.to_vec1::<f32>()?, "h {h}: heads split over 8 threads");
            }
        }
        Ok(())
    }

    #[test]
    fn softmax_matches_f64_and_zeroes_masked_keys() {
        for len in [1usize, 5, 16, 17, 40] {
            let mut row: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0).collect();
            if len > 3 {
                row[2] = f32::NEG_INFINITY;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = row.iter().map(|&x| if x == f32::NEG_INFINITY { 0.0 } else { (x as f64 - max).exp() }).collect();
            let total: f64 = exps.iter().sum();
            softmax_in_place(&mut row);
            for (got, e) in row.iter().zip(&exps) {
                assert!((*got as f64 - e / total).abs() < 1e-6, "len {len}: {got} vs {}", e / total);
            }
            if len > 3 {
                assert_eq!(row[2], 0.0);
            }
        }
    }
}
