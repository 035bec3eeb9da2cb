// Fused kernels for chains that candle would run as several kernels (see mod.rs for why).
// Each is instantiated for float, __nv_bfloat16 and __half; arithmetic is in f32, and a value is
// rounded to the storage type wherever the unfused chain (and the PyTorch reference) stores it,
// so the fused result is the unfused one up to the order of f32 sums.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half(v); }

// The value a tensor of type T would hold.
template <typename T> __device__ __forceinline__ float stored(float v) { return to_f32<T>(from_f32<T>(v)); }

// Sum (or max) over the block; every thread gets the result. blockDim.x is a multiple of 32.
// The leading barrier lets one kernel call these twice without a warp overwriting `partial`
// while another still reads it.
template <bool MAX> __device__ float block_reduce(float v) {
  __shared__ float partial[32];
  for (int m = 16; m > 0; m >>= 1) {
    float o = __shfl_xor_sync(0xffffffff, v, m);
    v = MAX ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x / 32) ? partial[lane] : (MAX ? -INFINITY : 0.f);
  for (int m = 16; m > 0; m >>= 1) {
    float o = __shfl_xor_sync(0xffffffff, v, m);
    v = MAX ? fmaxf(v, o) : v + o;
  }
  return v;
}

// The residual add and the RMSNorm after it (spec §2.4), one block per row of width d:
//   h = x + post(a), where post(a) = rms_norm(a)·alpha_post (Gemma 2's post-norms) or a;
//   out[0] = h, out[1] = rms_norm(h)·alpha.
// rms_norm(v) = v · rsqrt(mean(v²) + eps), as candle's kernel computes it; alpha is 1 + w.
template <typename T>
__device__ void add_norm(const T *x, const T *a, const T *alpha_post, int has_post, const T *alpha, T *out,
                         int rows, int d, float eps) {
  const size_t row = blockIdx.x;
  const T *xr = x + row * d;
  const T *ar = a + row * d;
  T *h = out + row * d;
  T *n = out + (size_t)rows * d + row * d;
  float post_scale = 1.f;
  if (has_post) {
    float s = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      const float v = to_f32(ar[c]);
      s += v * v;
    }
    post_scale = rsqrtf(block_reduce<false>(s) / d + eps);
  }
  float s = 0.f;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float branch = to_f32(ar[c]);
    if (has_post) branch = stored<T>(post_scale * branch * to_f32(alpha_post[c]));
    const float hv = stored<T>(to_f32(xr[c]) + branch);
    h[c] = from_f32<T>(hv);
    s += hv * hv;
  }
  const float scale = rsqrtf(block_reduce<false>(s) / d + eps);
  // Each thread reads back only the elements it wrote.
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    n[c] = from_f32<T>(scale * to_f32(h[c]) * to_f32(alpha[c]));
  }
}

// GeGLU over a fused gate|up row of width 2·hidden: gelu_tanh(gate) ⊙ up (spec §2.2: the tanh
// form). The activation is stored (rounded) before the product, as the reference does.
template <typename T>
__device__ void geglu(const T *gate_up, T *out, int rows, int hidden) {
  const size_t total = (size_t)rows * hidden;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / hidden, c = i % hidden;
    const float g = to_f32(gate_up[r * 2 * hidden + c]);
    const float u = to_f32(gate_up[r * 2 * hidden + hidden + c]);
    const float act = stored<T>(0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))));
    out[i] = from_f32<T>(act * u);
  }
}

// Attention probabilities, one block per row of s scores:
//   p = softmax(cap·tanh(scores) + mask)   (the query already carries scale / cap, spec §2.5),
// with the soft-cap only where cap > 0 and the mask only where given ([mask_rows, s]; row r uses
// mask row r mod mask_rows: the scores are [B, K, G, T, S] and the mask [T, S]). The capped and
// masked scores are stored as T (as the reference stores them); the softmax itself is f32.
template <typename T>
__device__ void masked_softmax(const T *scores, const T *mask, int has_mask, int mask_rows, int rows_per_sequence,
                               T *out, int s, float cap) {
  const size_t row = blockIdx.x;
  const T *src = scores + row * s;
  // Row `row % mask_rows` of the mask's [mask_rows, s] block: the one block, or with
  // per-sequence masks [B, mask_rows, s] the block of this row's sequence.
  const size_t block = rows_per_sequence > 0 ? row / rows_per_sequence : 0;
  const T *m = has_mask ? mask + (block * mask_rows + row % mask_rows) * (size_t)s : nullptr;
  T *dst = out + row * s;
  float top = -INFINITY;
  for (int c = threadIdx.x; c < s; c += blockDim.x) {
    float v = to_f32(src[c]);
    if (cap > 0.f) v = stored<T>(stored<T>(tanhf(v)) * cap);
    if (has_mask) v = stored<T>(v + to_f32(m[c]));
    dst[c] = from_f32<T>(v);
    top = fmaxf(top, v);
  }
  top = block_reduce<true>(top);
  float sum = 0.f;
  for (int c = threadIdx.x; c < s; c += blockDim.x) sum += expf(to_f32(dst[c]) - top);
  const float inv = 1.f / block_reduce<false>(sum);
  for (int c = threadIdx.x; c < s; c += blockDim.x) dst[c] = from_f32<T>(expf(to_f32(dst[c]) - top) * inv);
}

// The fixed-shape decode step's rotary embedding and cache write (crate::decode_step), one block
// per (sequence, head) of the fused q|k|v projection [B, 1, (n + 2k)·d]: query heads are rotated
// into q_out [B, n, 1, d]; key heads are rotated, and value heads copied, into the caches
// [B, k, cap, d] at the slot that slot[b] holds, with the rotary row cos[b], sin[b] [B, d/2]: in
// a ragged step every sequence stands at its own position. The rotation is the half-split form of candle and
// the reference (spec §2.7), each product and the sum stored as T. The caches are written in
// place, as the scatter this replaces writes them.
template <typename T>
__device__ void rope_store(const T *qkv, const T *cos, const T *sin, const uint32_t *slot, T *q_out, T *k_cache,
                           T *v_cache, int n, int k, int d, int cap) {
  const int heads = n + 2 * k;
  const int b = blockIdx.x / heads, head = blockIdx.x % heads;
  const size_t at = slot[b];
  cos += (size_t)b * (d / 2);
  sin += (size_t)b * (d / 2);
  // The host never asks for a slot past the cache; if it did, nothing is written there.
  if (head >= n && at >= (size_t)cap) return;
  const T *src = qkv + ((size_t)b * heads + head) * d;
  T *dst;
  if (head < n) dst = q_out + ((size_t)b * n + head) * d;
  else if (head < n + k) dst = k_cache + (((size_t)b * k + (head - n)) * cap + at) * d;
  else dst = v_cache + (((size_t)b * k + (head - n - k)) * cap + at) * d;
  const int half = d / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    if (head >= n + k) {
      dst[i] = src[i];
      dst[i + half] = src[i + half];
      continue;
    }
    const float x1 = to_f32(src[i]), x2 = to_f32(src[i + half]);
    const float c = to_f32(cos[i]), s = to_f32(sin[i]);
    dst[i] = from_f32<T>(stored<T>(x1 * c) - stored<T>(x2 * s));
    dst[i + half] = from_f32<T>(stored<T>(x1 * s) + stored<T>(x2 * c));
  }
}

#define INSTANTIATE(T, SUFFIX)                                                                          \
  extern "C" __global__ void add_norm_##SUFFIX(const T *x, const T *a, const T *alpha_post, int has_post, \
                                               const T *alpha, T *out, int rows, int d, float eps) {     \
    add_norm<T>(x, a, alpha_post, has_post, alpha, out, rows, d, eps);                                   \
  }                                                                                                     \
  extern "C" __global__ void geglu_##SUFFIX(const T *gate_up, T *out, int rows, int hidden) {           \
    geglu<T>(gate_up, out, rows, hidden);                                                               \
  }                                                                                                     \
  extern "C" __global__ void masked_softmax_##SUFFIX(const T *scores, const T *mask, int has_mask,      \
                                                     int mask_rows, int rows_per_sequence, T *out,      \
                                                     int s, float cap) {                                \
    masked_softmax<T>(scores, mask, has_mask, mask_rows, rows_per_sequence, out, s, cap);               \
  }                                                                                                     \
  extern "C" __global__ void rope_store_##SUFFIX(const T *qkv, const T *cos, const T *sin,              \
                                                 const uint32_t *slot, T *q_out, T *k_cache,            \
                                                 T *v_cache, int n, int k, int d, int cap) {            \
    rope_store<T>(qkv, cos, sin, slot, q_out, k_cache, v_cache, n, k, d, cap);                          \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
INSTANTIATE(__half, f16)
