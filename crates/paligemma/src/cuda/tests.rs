//! The fused kernels against plain f32 loops on the host, at shapes the reference fixtures do not
//! reach: real widths (2048, 2304, 16384), odd ones (80, 7), several rows, batches and heads.
//! They need a GPU, so they are built with the `cuda` feature only and run by
//! `scripts/gpu-check.sh` (from the test binary that `scripts/build-gpu-check.sh` packs).
//! An indexing slip gives errors of order one; the tolerances only admit the dtype's rounding.

use candle_core::{DType, Device, Tensor};

use super::{add_norm, geglu, masked_softmax, rope_and_store, RopeStore};

fn gpu() -> Device {
    Device::new_cuda(0).expect("the fused-kernel tests run on a machine with a CUDA GPU")
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// Largest error allowed, relative to max(1, |reference|): the output's rounding plus the
/// roundings the kernels keep on purpose (where the reference stores a value).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 2e-2,
        DType::F16 => 4e-3,
        _ => 2e-5,
    }
}

/// A random tensor in `dtype` on the GPU, and the same (rounded) values on the host.
fn random(shape: &[usize], scale: f32, offset: f32, dtype: DType, dev: &Device) -> (Tensor, Vec<f32>) {
    let t = ((Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * scale as f64).unwrap() + offset as f64).unwrap();
    let t = t.to_dtype(dtype).unwrap();
    let host = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (t.to_device(dev).unwrap(), host)
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(what: &str, dtype: DType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = tolerance(dtype);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * w.abs().max(1.0) || (g.is_infinite() && g == w);
        assert!(ok, "{what} {dtype:?}: element {i} is {g}, want {w}");
    }
}

/// `v` as a tensor of `dtype` stores it: the host side of the kernels' deliberate roundings.
fn stored(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32 + eps).sqrt().recip()
}

#[test]
fn add_norm_matches_the_unfused_chain() {
    let dev = gpu();
    let eps = 1e-6;
    for dtype in DTYPES {
        for (rows, d) in [(1, 2048), (3, 80), (266, 2304)] {
            for post in [false, true] {
                let (x, xh) = random(&[rows, d], 1.0, 0.0, dtype, &dev);
                let (a, ah) = random(&[rows, d], 2.0, 0.0, dtype, &dev);
                let (alpha, alpha_h) = random(&[d], 0.1, 1.0, dtype, &dev);
                let (post_alpha, post_h) = random(&[d], 0.1, 1.0, dtype, &dev);
                let (h, n) = add_norm(&x, &a, post.then_some(&post_alpha), &alpha, eps).unwrap().expect("fused on CUDA");
                let (mut want_h, mut want_n) = (Vec::new(), Vec::new());
                for r in 0..rows {
                    let (xr, ar) = (&xh[r * d..(r + 1) * d], &ah[r * d..(r + 1) * d]);
                    let post_scale = rms_scale(ar, eps);
                    let hr: Vec<f32> = (0..d).map(|c| xr[c] + if post { ar[c] * post_scale * post_h[c] } else { ar[c] }).collect();
                    let scale = rms_scale(&hr, eps);
                    want_n.extend((0..d).map(|c| hr[c] * scale * alpha_h[c]));
                    want_h.extend(hr);
                }
                let what = format!("add_norm rows {rows} d {d} post {post}");
                assert_close(&format!("{what} h"), dtype, &host(&h), &want_h);
                assert_close(&format!("{what} normed"), dtype, &host(&n), &want_n);
                assert_eq!(h.dims(), x.dims());
            }
        }
    }
}

#[test]
fn geglu_matches_the_tanh_gelu_of_the_gate_times_up() {
    let dev = gpu();
    for dtype in DTYPES {
        for (rows, hidden) in [(1, 16384), (5, 80)] {
            let (gate_up, gu) = random(&[rows, 1, 2 * hidden], 2.0, 0.0, dtype, &dev);
            let out = geglu(&gate_up, hidden).unwrap().expect("fused on CUDA");
            assert_eq!(out.dims(), [rows, 1, hidden]);
            let gelu = |g: f32| 0.5 * g * (1.0 + (0.797_884_6 * (g + 0.044715 * g * g * g)).tanh());
            let want: Vec<f32> = (0..rows * hidden).map(|i| (i / hidden, i % hidden)).map(|(r, c)| gelu(gu[r * 2 * hidden + c]) * gu[r * 2 * hidden + hidden + c]).collect();
            assert_close(&format!("geglu rows {rows} hidden {hidden}"), dtype, &host(&out), &want);
        }
    }
}

#[test]
fn masked_softmax_matches_cap_mask_and_softmax() {
    let dev = gpu();
    // (batch, kv heads, group, queries, keys): a decode step over the whole cache, a batched
    // 448 px prefill block, and odd sizes.
    for dtype in DTYPES {
        for (b, kv, g, t, s) in [(1, 1, 8, 1, 320), (2, 4, 2, 5, 1034), (1, 2, 2, 3, 7)] {
            for cap in [None, Some(50.0)] {
                // No mask, one `[t, s]` mask, and one per sequence `[b, t, s]` (a ragged step's).
                for (masked, per_sequence) in [(false, false), (true, false), (true, true)] {
                    let rows = b * kv * g * t;
                    // With the cap the scores stay small, so that cap·tanh spans a few units:
                    // one unit of rounding there (the reference rounds it too) then moves a
                    // probability by a few percent at most.
                    let spread = if cap.is_some() { 0.05 } else { 3.0 };
                    let (scores, sh) = random(&[b, kv, g * t, s], spread, 0.0, dtype, &dev);
                    // Query i sees keys up to s - t + i (never none), like a causal block; with a
                    // mask per sequence, sequence j sees j keys fewer (at least one).
                    let sequences = if per_sequence { b } else { 1 };
                    let mask_h: Vec<f32> = (0..sequences * t * s)
                        .map(|i| (i / (t * s), (i % (t * s)) / s, i % s))
                        .map(|(j, q, c)| if c <= (s - t + q).saturating_sub(j) { 0.0 } else { f32::NEG_INFINITY })
                        .collect();
                    let shape: &[usize] = if per_sequence { &[b, t, s] } else { &[t, s] };
                    let mask = Tensor::from_vec(mask_h.clone(), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_device(&dev).unwrap();
                    let probs = masked_softmax(&scores, masked.then_some(&mask), cap).unwrap().expect("fused on CUDA");
                    let mut want = Vec::with_capacity(rows * s);
                    for r in 0..rows {
                        let row: Vec<f32> = (0..s)
                            .map(|c| {
                                let v = sh[r * s + c];
                                let v = cap.map_or(v, |cap: f64| stored(stored(v.tanh(), dtype) * cap as f32, dtype));
                                let sequence = if per_sequence { r / (kv * g * t) } else { 0 };
                                if masked { v + mask_h[(sequence * t + r % t) * s + c] } else { v }
                            })
                            .collect();
                        let top = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let sum: f32 = row.iter().map(|v| (v - top).exp()).sum();
                        want.extend(row.iter().map(|v| (v - top).exp() / sum));
                    }
                    assert_close(&format!("masked_softmax {:?} cap {cap:?} masked {masked} per sequence {per_sequence}", (b, kv, g, t, s)), dtype, &host(&probs), &want);
                }
            }
        }
    }
}

#[test]
fn rope_and_store_rotates_queries_and_writes_only_the_slot() {
    let dev = gpu();
    for dtype in DTYPES {
        // (batch, query heads, kv heads, head dim, capacity, slot); sequence j writes slot
        // `slot - 2j` with rotary row j (a ragged step); the last slot is past the cache, where
        // nothing may be written.
        for (b, n, k, d, capacity, slot) in [(1, 8, 1, 256, 320, 17), (2, 4, 2, 24, 9, 8), (3, 2, 1, 8, 6, 6), (1, 2, 1, 8, 4, 4)] {
            let (qkv, qh) = random(&[b, 1, (n + 2 * k) * d], 1.0, 0.0, dtype, &dev);
            let (cos, cos_h) = random(&[b, 1, d / 2], 0.5, 0.0, dtype, &dev);
            let (sin, sin_h) = random(&[b, 1, d / 2], 0.5, 0.0, dtype, &dev);
            let k_cache = Tensor::zeros((b, k, capacity, d), dtype, &dev).unwrap();
            let v_cache = Tensor::zeros((b, k, capacity, d), dtype, &dev).unwrap();
            let slot_of = |j: usize| slot - 2 * j;
            let slots = Tensor::new((0..b).map(|j| slot_of(j) as u32).collect::<Vec<_>>(), &dev).unwrap();
            let args = RopeStore { qkv: &qkv, heads: (n, k), cos: &cos, sin: &sin, slot: &slots, k_cache: &k_cache, v_cache: &v_cache };
            let q = rope_and_store(&args).unwrap().expect("fused on CUDA");
            assert_eq!(q.dims(), [b, n, 1, d]);
            let rotate = |bi: usize, head: &[f32]| -> Vec<f32> {
                let half = d / 2;
                let (cos_h, sin_h) = (&cos_h[bi * half..], &sin_h[bi * half..]);
                let mut out = vec![0.0; d];
                for i in 0..half {
                    let product = |a: f32, b: f32| stored(a * b, dtype);
                    out[i] = product(head[i], cos_h[i]) - product(head[i + half], sin_h[i]);
                    out[i + half] = product(head[i], sin_h[i]) + product(head[i + half], cos_h[i]);
                }
                out
            };
            let head_of = |bi: usize, h: usize| &qh[(bi * (n + 2 * k) + h) * d..(bi * (n + 2 * k) + h + 1) * d];
            let want_q: Vec<f32> = (0..b).flat_map(|bi| (0..n).flat_map(move |h| rotate(bi, head_of(bi, h)))).collect();
            let what = format!("rope_and_store {:?}", (b, n, k, d, capacity, slot));
            assert_close(&format!("{what} q"), dtype, &host(&q), &want_q);
            let (mut want_k, mut want_v) = (vec![0.0; b * k * capacity * d], vec![0.0; b * k * capacity * d]);
            for bi in (0..b).filter(|&bi| slot_of(bi) < capacity) {
                for j in 0..k {
                    let at = ((bi * k + j) * capacity + slot_of(bi)) * d;
                    want_k[at..at + d].copy_from_slice(&rotate(bi, head_of(bi, n + j)));
                    want_v[at..at + d].copy_from_slice(head_of(bi, n + k + j));
                }
            }
            assert_close(&format!("{what} keys"), dtype, &host(&k_cache), &want_k);
            assert_close(&format!("{what} values"), dtype, &host(&v_cache), &want_v);
        }
    }
}

#[test]
fn layouts_and_dtypes_the_kernels_do_not_take_fall_back() {
    let dev = gpu();
    let x = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
    let strided = x.t().unwrap();
    assert!(geglu(&strided, 2).unwrap().is_none(), "a transposed input goes to candle's ops");
    assert!(geglu(&x, 3).unwrap().is_none(), "the width must be 2 · hidden");
    let ints = Tensor::zeros((4, 8), DType::U32, &dev).unwrap();
    assert!(masked_softmax(&ints, None, None).unwrap().is_none());
    let alpha = Tensor::ones(8, DType::F32, &dev).unwrap();
    let other = Tensor::ones(8, DType::BF16, &dev).unwrap();
    assert!(add_norm(&x, &x, None, &other, 1e-6).unwrap().is_none(), "mixed dtypes fall back");
    assert!(add_norm(&x, &x, None, &alpha, 1e-6).unwrap().is_some());
}
