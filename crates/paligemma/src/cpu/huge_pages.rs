//! CPU weight buffers backed by transparent huge pages.
//!
//! Why: decode reads every weight once per token, so its speed is the memory read rate. With
//! 4 KiB pages the TLB misses cap that rate: on the 2-core bench machine two threads read
//! ≈ 20 GB/s from 4 KiB pages and ≈ 27.5 GB/s from 2 MiB pages (`membw --hugepages`,
//! benches/RESULTS.md). Linux often runs THP in `madvise` mode, where only regions that ask
//! before their first touch get huge pages, so weight buffers are allocated here, advised, and
//! only then filled. Elsewhere (or when the advice is refused) they are ordinary buffers.

use candle_core::{DType, Device, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// An empty vector with room for `len` elements whose pages are advised as huge pages.
pub(crate) fn advised_vec<T>(len: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = len * std::mem::size_of::<T>();
        let start = (v.as_ptr() as usize).div_ceil(HUGE) * HUGE;
        let stop = (v.as_ptr() as usize + bytes) / HUGE * HUGE;
        if stop > start {
            // SAFETY: the range lies inside this vector's allocation, which nothing has touched;
            // the advice changes only how the kernel backs those pages, never their contents.
            // A refusal (no THP support) is harmless, so the result is ignored.
            let _ = unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    stop - start,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    v
}

/// A CPU tensor of `dtype` from little-endian safetensors bytes stored as `file_dtype`, written
/// once into an advised buffer; `None` for conversions this does not cover (f32 → half types),
/// which the caller does through candle.
pub fn tensor_from_le_bytes(
    bytes: &[u8],
    file_dtype: DType,
    dtype: DType,
    shape: &[usize],
) -> Result<Option<Tensor>> {
    let count: usize = shape.iter().product();
    if bytes.len() != count * file_dtype.size_in_bytes() {
        return Err(Error::Weights(format!(
            "{} bytes cannot hold a {file_dtype:?} tensor of shape {shape:?}",
            bytes.len()
        )));
    }
    let tensor = match (file_dtype, dtype) {
        // Named fn items, not pointers: each `filled` is monomorphised with its decoder inlined.
        (DType::F32, DType::F32) => filled(shape, bytes, f32_from_le)?,
        (DType::BF16, DType::F32) => filled(shape, bytes, bf16_le_to_f32)?,
        (DType::F16, DType::F32) => filled(shape, bytes, f16_le_to_f32)?,
        (DType::BF16, DType::BF16) => filled(shape, bytes, |b| half::bf16::from_le_bytes([b[0], b[1]]))?,
        (DType::F16, DType::F16) => filled(shape, bytes, |b| half::f16::from_le_bytes([b[0], b[1]]))?,
        _ => return Ok(None),
    };
    Ok(Some(tensor))
}

/// Decodes every stored element (`bytes.len() / count` bytes each) into an advised buffer,
/// in parallel chunks: the first touch of the pages (a large part of loading on a VM) and the
/// reads from the mapped file proceed on every thread of the pool.
fn filled<T: WithDType>(shape: &[usize], bytes: &[u8], decode: impl Fn(&[u8]) -> T + Sync) -> Result<Tensor> {
    const CHUNK: usize = 1 << 18;
    let count: usize = shape.iter().product();
    if count == 0 {
        return Ok(Tensor::from_vec(Vec::<T>::new(), shape, &Device::Cpu)?);
    }
    let elem = bytes.len() / count;
    let mut v = advised_vec::<T>(count);
    v.spare_capacity_mut()[..count].par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * elem)).for_each(|(out, src)| {
        for (o, b) in out.iter_mut().zip(src.chunks_exact(elem)) {
            o.write(decode(b));
        }
    });
    // SAFETY: the capacity is at least `count` and the chunks above wrote elements 0..count
    // (`bytes` holds exactly `count` elements, checked by the caller).
    unsafe { v.set_len(count) };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Concatenates CPU matrices along their first dimension into an advised buffer (fused q/k/v and
/// gate/up weights); `None` when they are not all contiguous CPU matrices of one dtype with the
/// same width, which the caller concatenates through candle.
pub fn cat_rows(parts: &[&Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let (dtype, width) = (first.dtype(), first.dim(1)?);
    if parts.iter().any(|p| {
        !p.device().is_cpu() || p.rank() != 2 || p.dtype() != dtype || p.dims()[1] != width
    }) {
        return Ok(None);
    }
    let rows: usize = parts.iter().map(|p| p.dims()[0]).sum();
    Ok(match dtype {
        DType::F32 => Some(cat_typed::<f32>(parts, rows, width)?),
        DType::BF16 => Some(cat_typed::<half::bf16>(parts, rows, width)?),
        DType::F16 => Some(cat_typed::<half::f16>(parts, rows, width)?),
        _ => None,
    })
}

fn cat_typed<T: WithDType>(parts: &[&Tensor], rows: usize, width: usize) -> Result<Tensor> {
    let mut v = advised_vec::<T>(rows * width);
    for part in parts {
        let part = part.contiguous()?;
        let (storage, layout) = part.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(Error::Internal(
                "cat_rows: a CPU tensor without CPU storage".into(),
            ));
        };
        let start = layout.start_offset();
        v.extend_from_slice(&cpu.as_slice::<T>()?[start..start + part.elem_count()]);
    }
    Ok(Tensor::from_vec(v, (rows, width), &Device::Cpu)?)
}

/// Builds the panel-major f32 matrix ([`super::panels`]) of several `[rows, in]` stored
/// matrices stacked along their output rows, each multiplied by its own factor, written once
/// into an advised buffer. This is the CPU layout of dense f32 projections (see
/// `layers::Layout::Panels`): the fused q/k/v or gate/up matrices come straight from the mapped
/// checkpoint without an intermediate copy.
pub struct PanelStack {
    data: Vec<f32>,
    in_dim: usize,
    total_rows: usize,
    filled_rows: usize,
}

/// Inputs decoded per stored row before they are interleaved into a panel: one panel's block
/// (16 rows of it) stays in L1.
pub(super) const BLOCK_INPUTS: usize = 256;

/// The output rows `first_row..first_row + rows` of a stacked matrix, stored `[rows, k]` as
/// `dtype` bytes, to be multiplied by `factor`.
pub(super) struct StoredRows<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) dtype: DType,
    pub(super) k: usize,
    pub(super) first_row: usize,
    pub(super) rows: usize,
    pub(super) factor: f32,
}

/// Decodes `rows` into a panel-major buffer of panels of 16 outputs, `per_panel` elements each,
/// on the current pool: each task owns one panel, so the tasks write disjoint memory, and only
/// the panels the rows overlap have work. For every such panel and block of up to 256 inputs,
/// `write(panel, c0, depth, outputs, block)` gets the overlapping outputs' values of inputs
/// `c0..c0 + depth`, multiplied by the factor, at `block[output % 16][c]`.
pub(super) fn fill_panels<T: Send>(
    panels: &mut [T],
    per_panel: usize,
    rows: StoredRows,
    write: impl Fn(&mut [T], usize, usize, std::ops::Range<usize>, &[[f32; BLOCK_INPUTS]; super::panels::PANEL]) + Sync,
) -> Result<()> {
    use super::panels::PANEL;
    let StoredRows { bytes, dtype, k, first_row, rows, factor } = rows;
    let elem = dtype.size_in_bytes();
    if bytes.len() != rows * k * elem {
        return Err(Error::Internal(format!("panel stack: {} bytes of {dtype:?} for {rows}×{k}", bytes.len())));
    }
    if k == 0 || rows == 0 || per_panel == 0 {
        return Ok(());
    }
    panels.par_chunks_mut(per_panel).enumerate().try_for_each(|(panel, out)| {
        let outputs = (panel * PANEL).max(first_row)..((panel + 1) * PANEL).min(first_row + rows);
        if outputs.is_empty() {
            return Ok(());
        }
        let mut block = [[0f32; BLOCK_INPUTS]; PANEL];
        for c0 in (0..k).step_by(BLOCK_INPUTS) {
            let depth = BLOCK_INPUTS.min(k - c0);
            for j in outputs.clone() {
                let values = &mut block[j % PANEL][..depth];
                decode_into(&bytes[((j - first_row) * k + c0) * elem..][..depth * elem], dtype, values)?;
                values.iter_mut().for_each(|v| *v *= factor);
            }
            write(out, c0, depth, outputs.clone(), &block);
        }
        Ok::<(), Error>(())
    })
}

/// A zero-filled advised buffer, first touched by every thread of the pool at once: on a VM
/// the page faults of a fresh multi-gigabyte buffer are a large part of loading, and they
/// proceed in parallel.
pub(super) fn zeroed_in_parallel<T: Copy + Send + Sync>(len: usize, zero: T) -> Vec<T> {
    let mut v = advised_vec::<T>(len);
    let per_chunk = ((4 << 20) / std::mem::size_of::<T>().max(1)).max(1);
    v.spare_capacity_mut().par_chunks_mut(per_chunk).for_each(|chunk| {
        for x in chunk {
            x.write(zero);
        }
    });
    // SAFETY: the capacity is `len` (advised_vec) and every element was written just above.
    unsafe { v.set_len(len) };
    v
}

impl PanelStack {
    pub fn new(in_dim: usize, total_rows: usize) -> Self {
        PanelStack { data: zeroed_in_parallel(super::panels::packed_len(in_dim, total_rows), 0f32), in_dim, total_rows, filled_rows: 0 }
    }

    /// Appends the output rows of one stored `[rows, in]` matrix (f32, bf16 or f16 bytes).
    pub fn push(&mut self, bytes: &[u8], dtype: DType, rows: usize, factor: f32) -> Result<()> {
        use super::panels::PANEL;
        let (k, first_row) = (self.in_dim, self.filled_rows);
        if self.filled_rows + rows > self.total_rows {
            return Err(Error::Internal(format!("panel stack: {rows} more rows than the {} left", self.total_rows - self.filled_rows)));
        }
        fill_panels(&mut self.data, k * PANEL, StoredRows { bytes, dtype, k, first_row, rows, factor }, |out, c0, depth, outputs, block| {
            for c in 0..depth {
                let lanes = &mut out[(c0 + c) * PANEL..][..PANEL];
                for j in outputs.clone() {
                    lanes[j % PANEL] = block[j % PANEL][c];
                }
            }
        })?;
        self.filled_rows += rows;
        Ok(())
    }

    /// The panel-major matrix; every output row must have been pushed.
    pub fn finish(self) -> Result<Vec<f32>> {
        if self.filled_rows != self.total_rows {
            return Err(Error::Internal(format!("panel stack: {} of {} output rows filled", self.filled_rows, self.total_rows)));
        }
        Ok(self.data)
    }
}

// One little-endian stored element widened (exactly) to f32.
fn f32_from_le(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn bf16_le_to_f32(b: &[u8]) -> f32 {
    super::bf16_panels::bf16_value(u16::from_le_bytes([b[0], b[1]]))
}
fn f16_le_to_f32(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Little-endian f32/bf16/f16 bytes → f32 values.
pub(super) fn decode_into(bytes: &[u8], dtype: DType, out: &mut [f32]) -> Result<()> {
    let mut widen = |decode: fn(&[u8]) -> f32, size: usize| out.iter_mut().zip(bytes.chunks_exact(size)).for_each(|(o, b)| *o = decode(b));
    match dtype {
        DType::F32 => widen(f32_from_le, 4),
        DType::BF16 => widen(bf16_le_to_f32, 2),
        DType::F16 => widen(f16_le_to_f32, 2),
        other => return Err(Error::Internal(format!("panel stack: unsupported stored dtype {other:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_stored_dtype_exactly() -> Result<()> {
        let values = [1.5f32, -0.25, 3.0e-3, 65504.0, -0.0, 7.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t =
            tensor_from_le_bytes(&f32_bytes, DType::F32, DType::F32, &[2, 3])?.expect("covered");
        assert_eq!(t.flatten_all()?.to_vec1::<f32>()?, values);
        // bf16 and f16 widen exactly to f32: compare with candle's own conversion.
        for (dt, bytes) in [
            (
                DType::BF16,
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            (
                DType::F16,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        ] {
            let ours = tensor_from_le_bytes(&bytes, dt, DType::F32, &[6])?.expect("covered");
            let candle =
                Tensor::from_raw_buffer(&bytes, dt, &[6], &Device::Cpu)?.to_dtype(DType::F32)?;
            assert_eq!(ours.to_vec1::<f32>()?, candle.to_vec1::<f32>()?);
            let same = tensor_from_le_bytes(&bytes, dt, dt, &[6])?.expect("covered");
            assert_eq!(
                same.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                candle.to_vec1::<f32>()?
            );
        }
        assert!(tensor_from_le_bytes(&f32_bytes, DType::F32, DType::BF16, &[6])?.is_none());
        assert!(tensor_from_le_bytes(&f32_bytes, DType::F32, DType::F32, &[7]).is_err());
        let empty = tensor_from_le_bytes(&[], DType::BF16, DType::F32, &[0, 4])?.expect("covered");
        assert_eq!(empty.dims(), [0, 4]);
        Ok(())
    }

    #[test]
    fn panel_stack_matches_candle_transpose_and_cat() -> Result<()> {
        // Two parts with row counts that straddle a 16-row panel, bf16 and f32; input widths
        // below and above one 256-input block.
        for k in [5, 300] {
            check_panel_stack(k)?;
        }
        Ok(())
    }

    fn check_panel_stack(k: usize) -> Result<()> {
        let (r1, r2) = (19, 3);
        let a = Tensor::arange(0f32, (r1 * k) as f32, &Device::Cpu)?.reshape((r1, k))?;
        let b = (Tensor::arange(0f32, (r2 * k) as f32, &Device::Cpu)?.reshape((r2, k))? * 0.5)?;
        let a_bytes: Vec<u8> = a.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b_bf16: Vec<u8> = b.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let mut stack = PanelStack::new(k, r1 + r2);
        stack.push(&a_bytes, DType::F32, r1, 2.0)?;
        stack.push(&b_bf16, DType::BF16, r2, 1.0)?;
        let ours = stack.finish()?;
        // b went through bf16, which rounds values above 256 (k = 300) to steps of 2.
        let b_stored = b.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
        let want = Tensor::cat(&[&(a * 2.0)?, &b_stored], 0)?.t()?.contiguous()?;
        let want = crate::cpu::panels::pack(&want.flatten_all()?.to_vec1::<f32>()?, k, r1 + r2);
        assert_eq!(ours, want);
        // Too many rows, or unfilled rows, are errors rather than silent garbage.
        let mut short = PanelStack::new(k, r1 + r2);
        assert!(short.push(&a_bytes, DType::F32, r1 + 1, 1.0).is_err());
        short.push(&a_bytes, DType::F32, r1, 1.0)?;
        assert!(short.finish().is_err());
        Ok(())
    }

    #[test]
    fn cat_rows_matches_candle_cat() -> Result<()> {
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?;
        let b = Tensor::arange(6f32, 15.0, &Device::Cpu)?.reshape((3, 3))?;
        let ours = cat_rows(&[&a, &b])?.expect("covered");
        assert_eq!(
            ours.to_vec2::<f32>()?,
            Tensor::cat(&[&a, &b], 0)?.to_vec2::<f32>()?
        );
        // A transposed view is read in logical order.
        let c = Tensor::arange(0f32, 6.0, &Device::Cpu)?
            .reshape((3, 2))?
            .t()?;
        let ours = cat_rows(&[&c, &a])?.expect("covered");
        assert_eq!(
            ours.to_vec2::<f32>()?,
            Tensor::cat(&[&c, &a], 0)?.to_vec2::<f32>()?
        );
        // Mismatched widths or dtypes are left to candle.
        let narrow = Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?;
        assert!(cat_rows(&[&a, &narrow])?.is_none());
        assert!(cat_rows(&[&a, &a.to_dtype(DType::F16)?])?.is_none());
        Ok(())
    }
}
