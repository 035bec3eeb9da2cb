//! Quantized projections: the formats, and quantizing a dense matrix into candle's blocks.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::cpu;
use crate::cpu::int4_panels::Int4Panels;
use crate::cpu::int8_panels::Int8Panels;
use crate::error::{Error, Result};

/// Weight formats for the decoder's matmuls on the CPU (candle's GGML kernels): fewer bytes
/// per decoded token, which is what bounds CPU decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 8-bit, blocks of 32 (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quants, blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl Quantization {
    pub(crate) fn ggml(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4K => GgmlDType::Q4K,
        }
    }
    /// The input width must be a multiple of this for a matrix to be quantized.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4K => "q4k",
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q8_0" => Ok(Quantization::Q8_0),
            "q4k" => Ok(Quantization::Q4K),
            other => Err(Error::invalid("dtype", format!("`{other}` is not a quantization (q8_0, q4k)"))),
        }
    }
}

/// A quantized matrix, held the way its kernel reads it.
#[derive(Debug, Clone)]
pub enum QuantizedMatrix {
    /// candle's blocks (and candle's repacked copy of them, [`cpu::repacked`]).
    Candle(QMatMul),
    /// `q8_0` on a CPU with AVX-512 VNNI: our int8 panels ([`cpu::int8_panels`]), faster than
    /// candle's kernel at every row count, and candle's blocks dropped.
    Int8Panels(std::sync::Arc<Int8Panels>),
    /// `q4k` on a CPU with AVX-512 VNNI: our int4 panels ([`cpu::int4_panels`]), which decode
    /// at the memory's bandwidth, and candle's blocks dropped.
    Int4Panels(std::sync::Arc<Int4Panels>),
}

/// Sees a matrix's candle blocks, with its rows and columns, before they are released (a
/// prepared folder stores them; int8 panels it records from the matrix itself).
pub type KeepBlocks<'a> = Option<&'a dyn Fn(&[u8], usize, usize) -> Result<()>>;

/// Quantizes `[out, in]` (rows are dot products over `in`), or `None` when `in` is not a
/// multiple of the block size. Blocks never cross a row, so bands of rows are quantized in
/// parallel on the current pool and their bytes laid end to end: the same bytes as quantizing
/// the whole matrix at once (candle does that on one thread; Q4_K took 69 s for PaliGemma-3B).
///
/// On the CPU the matrix is then made ready for its kernel: `q8_0` on a CPU with AVX-512 VNNI
/// is repacked into int8 panels ([`cpu::int8_panels`]) and candle's blocks dropped; otherwise
/// candle's repacked copy is made here, and the original released when candle no longer reads
/// it ([`cpu::repacked`]). Either way the matrix is held once and the first request does not
/// pay for a repack.
pub fn quantize_matrix(weight: &Tensor, q: Quantization, keep: KeepBlocks) -> Result<Option<(QuantizedMatrix, cpu::repacked::Outcome)>> {
    let (rows, cols) = weight.dims2()?;
    if cols % q.block_size() != 0 {
        return Ok(None);
    }
    if !weight.device().is_cpu() || rows == 0 {
        return Ok(Some((QuantizedMatrix::Candle(QMatMul::from_qtensor(QTensor::quantize(weight, q.ggml())?)?), cpu::repacked::Outcome::Kept)));
    }
    let qm = quantize_in_bands(weight, q)?;
    if let QMatMul::QTensor(qt) = &qm {
        if let Some(panels) = int8_panels(&qt.data()?, q, rows, cols)? {
            return Ok(Some(panels));
        }
        if let Some(panels) = int4_panels(&qt.data()?, q, rows, cols)? {
            // A prepared folder stores `q4k` as candle's blocks, repacked again at load.
            if let Some(keep) = keep {
                keep(&qt.data()?, rows, cols)?;
            }
            return Ok(Some(panels));
        }
    }
    if let (Some(keep), QMatMul::QTensor(qt)) = (keep, &qm) {
        // Before the release below hands the original blocks back (a prepared folder stores them).
        keep(&qt.data()?, rows, cols)?;
    }
    let (qm, outcome) = cpu::repacked::release_original(qm, || quantize_in_bands(weight, q))?;
    Ok(Some((QuantizedMatrix::Candle(qm), outcome)))
}

/// The int8 panels of a `[rows, cols]` matrix's `q` blocks, where this CPU and shape take them.
fn int8_panels(bytes: &[u8], q: Quantization, rows: usize, cols: usize) -> Result<Option<(QuantizedMatrix, cpu::repacked::Outcome)>> {
    if q != Quantization::Q8_0 || !cpu::int8_panels::available() || !Int8Panels::fits(rows, cols) {
        return Ok(None);
    }
    let panels = Int8Panels::from_q8_0(bytes, rows, cols)?;
    Ok(Some((QuantizedMatrix::Int8Panels(std::sync::Arc::new(panels)), cpu::repacked::Outcome::Int8Panels)))
}

/// The int4 panels of a `[rows, cols]` matrix's `q` blocks, where this CPU and shape take them.
fn int4_panels(bytes: &[u8], q: Quantization, rows: usize, cols: usize) -> Result<Option<(QuantizedMatrix, cpu::repacked::Outcome)>> {
    if q != Quantization::Q4K || !cpu::int4_panels::available() || !Int4Panels::fits(rows, cols) {
        return Ok(None);
    }
    let panels = Int4Panels::from_q4k(bytes, rows, cols)?;
    Ok(Some((QuantizedMatrix::Int4Panels(std::sync::Arc::new(panels)), cpu::repacked::Outcome::Int8Panels)))
}

/// A `[rows, cols]` matrix from its stored `q` blocks (a prepared folder's), made ready the way
/// [`quantize_matrix`] leaves one: in int8 panels, or candle's repacked copy made and the
/// original released.
pub fn quantized_from_blocks(bytes: &[u8], q: Quantization, rows: usize, cols: usize) -> Result<(QuantizedMatrix, cpu::repacked::Outcome)> {
    let expected = rows * (cols / q.block_size()) * q.ggml().type_size();
    if !cols.is_multiple_of(q.block_size()) || bytes.len() != expected {
        return Err(Error::Weights(format!("{} bytes of {} blocks for a [{rows}, {cols}] matrix (expected {expected})", bytes.len(), q.as_str())));
    }
    if let Some(panels) = int8_panels(bytes, q, rows, cols)? {
        return Ok(panels);
    }
    if let Some(panels) = int4_panels(bytes, q, rows, cols)? {
        return Ok(panels);
    }
    let build = || -> Result<QMatMul> { Ok(QMatMul::from_qtensor(qtensor_from_ggml(q.ggml(), bytes, vec![rows, cols], &Device::Cpu)?)?) };
    let (qm, outcome) = cpu::repacked::release_original(build()?, build)?;
    Ok((QuantizedMatrix::Candle(qm), outcome))
}

/// A `[rows, cols]` `q8_0` matrix from a prepared folder's stored int8 panels: used in place
/// where this CPU runs them, else turned back into candle's blocks (the same values).
pub fn quantized_from_panels(mapped: crate::weights::MappedBytes, rows: usize, cols: usize) -> Result<(QuantizedMatrix, cpu::repacked::Outcome)> {
    if cpu::int8_panels::available() {
        let panels = Int8Panels::from_mapped(mapped, rows, cols)?;
        return Ok((QuantizedMatrix::Int8Panels(std::sync::Arc::new(panels)), cpu::repacked::Outcome::Int8Panels));
    }
    let blocks = Int8Panels::q8_0_from_stored(mapped.as_slice(), rows, cols)?;
    quantized_from_blocks(&blocks, Quantization::Q8_0, rows, cols)
}

fn quantize_in_bands(weight: &Tensor, q: Quantization) -> Result<QMatMul> {
    let rows = weight.dim(0)?;
    let band = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
    let starts: Vec<usize> = (0..rows).step_by(band).collect();
    let bands = starts
        .into_par_iter()
        // A band is copied first: candle's quantize reads the source storage from its start,
        // ignoring a view's offset.
        .map(|r0| Ok(QTensor::quantize(&weight.narrow(0, r0, band.min(rows - r0))?.force_contiguous()?, q.ggml())?.data()?.into_owned()))
        .collect::<Result<Vec<Vec<u8>>>>()?;
    let qt = qtensor_from_ggml(q.ggml(), &bands.concat(), weight.dims().to_vec(), &Device::Cpu)?;
    Ok(QMatMul::from_qtensor(qt)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Module};

    #[test]
    fn banded_quantization_gives_the_same_matrix_as_candle_in_one_piece() -> Result<()> {
        // 37 rows: bands of uneven size; 512 columns: two Q4_K blocks per row.
        let w = Tensor::randn(0f32, 0.05, (37, 512), &Device::Cpu)?;
        let x = Tensor::randn(0f32, 1.0, (3, 512), &Device::Cpu)?;
        for q in [Quantization::Q8_0, Quantization::Q4K] {
            let ours = quantize_in_bands(&w, q)?;
            let whole = QMatMul::from_qtensor(QTensor::quantize(&w, q.ggml())?)?;
            let diff = (ours.forward(&x)? - whole.forward(&x)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{q:?}");
        }
        assert!(quantize_matrix(&Tensor::zeros((4, 100), DType::F32, &Device::Cpu)?, Quantization::Q8_0, None)?.is_none());
        Ok(())
    }
}
