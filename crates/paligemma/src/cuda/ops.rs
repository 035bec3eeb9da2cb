//! The launches behind [`super`]: each kernel is a candle `CustomOp1` on its main input, with
//! the other tensors it reads held in the op. Outputs are fresh buffers from candle's allocator,
//! so the ops can be captured in a CUDA graph like candle's own.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage, StorageRef, Tensor, WithDType};

use crate::error::Result;

const MODULE: &str = "paligemma_fused";
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));

/// Whether the fused kernels take `t` (dtype and layout; the caller has checked the device).
fn covered(t: &Tensor) -> bool {
    matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) && t.layout().is_contiguous()
}

pub(super) fn add_norm(x: &Tensor, a: &Tensor, post_alpha: Option<&Tensor>, alpha: &Tensor, eps: f32) -> Result<Option<(Tensor, Tensor)>> {
    let d = x.dim(candle_core::D::Minus1)?;
    let same = |t: &Tensor| covered(t) && t.dtype() == x.dtype();
    let all_covered = [x, a, alpha].into_iter().chain(post_alpha).all(same);
    if !all_covered || a.shape() != x.shape() || alpha.elem_count() != d || post_alpha.is_some_and(|p| p.elem_count() != d) {
        return Ok(None);
    }
    let kernel = Kernel::AddNorm { a: a.clone(), post_alpha: post_alpha.cloned(), alpha: alpha.clone(), eps };
    let both = x.apply_op1_no_bwd(&Fused(kernel))?;
    Ok(Some((both.get(0)?, both.get(1)?)))
}

pub(super) fn geglu(gate_up: &Tensor, hidden: usize) -> Result<Option<Tensor>> {
    if !covered(gate_up) || gate_up.dim(candle_core::D::Minus1)? != 2 * hidden {
        return Ok(None);
    }
    Ok(Some(gate_up.apply_op1_no_bwd(&Fused(Kernel::Geglu { hidden }))?))
}

pub(super) fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, softcap: Option<f64>) -> Result<Option<Tensor>> {
    let s = scores.dim(candle_core::D::Minus1)?;
    let rows = scores.elem_count() / s.max(1);
    let batch = scores.dims().first().copied().unwrap_or(1);
    let mask_fits = |m: &Tensor| {
        let (t, per_sequence) = match *m.dims() {
            [t, w] if w == s => (t, false),
            [b, t, w] if w == s && b == batch => (t, true),
            _ => return false,
        };
        let sequences = if per_sequence { batch } else { 1 };
        covered(m) && m.dtype() == scores.dtype() && t > 0 && rows.is_multiple_of(t * sequences)
    };
    if !covered(scores) || !mask.is_none_or(mask_fits) {
        return Ok(None);
    }
    let kernel = Kernel::MaskedSoftmax { mask: mask.cloned(), cap: softcap.unwrap_or(0.0) as f32 };
    Ok(Some(scores.apply_op1_no_bwd(&Fused(kernel))?))
}

pub(super) fn rope_and_store(args: &super::RopeStore) -> Result<Option<Tensor>> {
    let super::RopeStore { qkv, heads: (n, k), cos, sin, slot, k_cache, v_cache } = *args;
    let (b, t, width) = qkv.dims3()?;
    let (cache_b, cache_k, capacity, d) = k_cache.dims4()?;
    let same = |t: &Tensor| covered(t) && t.dtype() == qkv.dtype();
    let fits = t == 1
        && d % 2 == 0
        && width == (n + 2 * k) * d
        && (cache_b, cache_k) == (b, k)
        && v_cache.shape() == k_cache.shape()
        && cos.elem_count() == b * (d / 2)
        && sin.elem_count() == b * (d / 2)
        && slot.dtype() == DType::U32
        && slot.elem_count() == b
        && slot.layout().is_contiguous()
        && [qkv, cos, sin, k_cache, v_cache].into_iter().all(same);
    if !fits {
        return Ok(None);
    }
    let kernel = Kernel::RopeStore {
        cos: cos.clone(),
        sin: sin.clone(),
        slot: slot.clone(),
        k_cache: k_cache.clone(),
        v_cache: v_cache.clone(),
        heads: (n, k),
        capacity,
    };
    Ok(Some(qkv.apply_op1_no_bwd(&Fused(kernel))?))
}

enum Kernel {
    AddNorm { a: Tensor, post_alpha: Option<Tensor>, alpha: Tensor, eps: f32 },
    Geglu { hidden: usize },
    MaskedSoftmax { mask: Option<Tensor>, cap: f32 },
    RopeStore { cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor, v_cache: Tensor, heads: (usize, usize), capacity: usize },
}

struct Fused(Kernel);

/// A tensor the op reads besides its main input: the storage stays locked while it is borrowed.
struct Held<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    fn new(t: &'a Tensor) -> Self {
        let (storage, layout) = t.storage_and_layout();
        Held { storage, layout }
    }
    fn view<T: CudaDType>(&self) -> candle_core::Result<CudaView<'_, T>> {
        let Storage::Cuda(cs) = &*self.storage else {
            candle_core::bail!("fused kernel input is not on the CUDA device")
        };
        view(cs, self.layout)
    }
}

fn view<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused kernel input is not contiguous")
    };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// Threads per block for a row of `width` elements: a whole number of warps, at most 1024.
fn block_for(width: usize) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, 1024) as u32
}

impl Fused {
    fn launch<T: CudaDType + DeviceRepr + WithDType>(&self, storage: &CudaStorage, layout: &Layout, suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = storage.device();
        let input = view::<T>(storage, layout)?;
        let shape = layout.shape();
        let width = shape.dims().last().copied().unwrap_or(1).max(1);
        let rows = shape.elem_count() / width;
        match &self.0 {
            Kernel::AddNorm { a, post_alpha, alpha, eps } => {
                let (a, alpha) = (Held::new(a), Held::new(alpha));
                let post = post_alpha.as_ref().map(Held::new);
                let (a, alpha) = (a.view::<T>()?, alpha.view::<T>()?);
                let post = post.as_ref().map(Held::view::<T>).transpose()?;
                // SAFETY: every element is written by the kernel before it is read.
                let out = unsafe { dev.alloc::<T>(2 * shape.elem_count())? };
                let func = dev.get_or_load_custom_func(&format!("add_norm_{suffix}"), MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&input);
                b.arg(&a);
                // Without a post-norm the kernel never reads this pointer; `alpha` stands in.
                b.arg(post.as_ref().unwrap_or(&alpha));
                candle_core::builder_arg!(b, i32::from(post.is_some()));
                b.arg(&alpha);
                b.arg(&out);
                candle_core::builder_arg!(b, rows as i32, width as i32, *eps);
                let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block_for(width), 1, 1), shared_mem_bytes: 0 };
                // SAFETY: the arguments match the kernel's signature in fused.cu.
                unsafe { b.launch(cfg) }.w()?;
                let mut dims = vec![2];
                dims.extend_from_slice(shape.dims());
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(dims)))
            }
            Kernel::Geglu { hidden } => {
                let rows = shape.elem_count() / (2 * hidden).max(1);
                let total = rows * hidden;
                // SAFETY: the kernel writes every element.
                let out = unsafe { dev.alloc::<T>(total)? };
                let func = dev.get_or_load_custom_func(&format!("geglu_{suffix}"), MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&input);
                b.arg(&out);
                candle_core::builder_arg!(b, rows as i32, *hidden as i32);
                let blocks = total.div_ceil(256).clamp(1, 65_535) as u32;
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: the arguments match the kernel's signature in fused.cu.
                unsafe { b.launch(cfg) }.w()?;
                let mut dims = shape.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = *hidden;
                }
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(dims)))
            }
            Kernel::MaskedSoftmax { mask, cap } => {
                let held = mask.as_ref().map(Held::new);
                let mask_view = held.as_ref().map(Held::view::<T>).transpose()?;
                // A query row's mask row: `row % t` of its sequence's `[t, s]` block, the block
                // `row / (rows per sequence)` for per-sequence masks `[B, t, s]`, else the one.
                let (mask_rows, rows_per_sequence) = match mask.as_ref().map(|m| m.dims().to_vec()).as_deref() {
                    Some(&[_, t, _]) => (t, rows / shape.dims().first().copied().unwrap_or(1).max(1)),
                    Some(&[t, _]) => (t, 0),
                    _ => (1, 0),
                };
                // SAFETY: the kernel writes every element.
                let out = unsafe { dev.alloc::<T>(shape.elem_count())? };
                let func = dev.get_or_load_custom_func(&format!("masked_softmax_{suffix}"), MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&input);
                // Without a mask the kernel never reads this pointer; the scores stand in.
                b.arg(mask_view.as_ref().unwrap_or(&input));
                candle_core::builder_arg!(b, i32::from(mask_view.is_some()), mask_rows as i32, rows_per_sequence as i32);
                b.arg(&out);
                candle_core::builder_arg!(b, width as i32, *cap);
                let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block_for(width).min(256), 1, 1), shared_mem_bytes: 0 };
                // SAFETY: the arguments match the kernel's signature in fused.cu.
                unsafe { b.launch(cfg) }.w()?;
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape.clone()))
            }
            Kernel::RopeStore { cos, sin, slot, k_cache, v_cache, heads: (n, k), capacity } => {
                let batch = shape.dims().first().copied().unwrap_or(1);
                let d = width / (n + 2 * k);
                let held = [cos, sin, k_cache, v_cache].map(Held::new);
                let [cos, sin, k_cache, v_cache] = [0, 1, 2, 3].map(|i| held[i].view::<T>());
                let (cos, sin, k_cache, v_cache) = (cos?, sin?, k_cache?, v_cache?);
                let slot_held = Held::new(slot);
                let slot = slot_held.view::<u32>()?;
                // SAFETY: the kernel writes every element (each query head is rotated).
                let q = unsafe { dev.alloc::<T>(batch * n * d)? };
                let func = dev.get_or_load_custom_func(&format!("rope_store_{suffix}"), MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&input);
                b.arg(&cos);
                b.arg(&sin);
                b.arg(&slot);
                b.arg(&q);
                // The caches are borrowed for reading, but the kernel writes one slot of each in
                // place, as candle's scatter_set (which this replaces) does. Every kernel of the
                // step runs on the one stream, so nothing reads the slot before it is written.
                b.arg(&k_cache);
                b.arg(&v_cache);
                candle_core::builder_arg!(b, *n as i32, *k as i32, d as i32, *capacity as i32);
                let blocks = (batch * (n + 2 * k)) as u32;
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: ((d / 2).clamp(1, 1024) as u32, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: the arguments match the kernel's signature in fused.cu; the slot is
                // checked against the capacity on the device.
                unsafe { b.launch(cfg) }.w()?;
                Ok((CudaStorage::wrap_cuda_slice(q, dev.clone()), Shape::from((batch, *n, 1, d))))
            }
        }
    }
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        match self.0 {
            Kernel::AddNorm { .. } => "paligemma-add-norm",
            Kernel::Geglu { .. } => "paligemma-geglu",
            Kernel::MaskedSoftmax { .. } => "paligemma-masked-softmax",
            Kernel::RopeStore { .. } => "paligemma-rope-store",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match storage.dtype() {
            DType::F32 => self.launch::<f32>(storage, layout, "f32"),
            DType::BF16 => self.launch::<half::bf16>(storage, layout, "bf16"),
            DType::F16 => self.launch::<half::f16>(storage, layout, "f16"),
            other => candle_core::bail!("{} does not take {other:?}", self.name()),
        }
    }
}
