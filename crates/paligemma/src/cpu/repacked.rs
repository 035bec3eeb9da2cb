//! Quantized matrices held once instead of twice.
//!
//! Why: on its first matmul candle 0.11.1 repacks a `q8_0` or `q4k` matrix into tiles for its
//! VNNI kernels (`quantized/repack_x86.rs`) and keeps the original as well, which it does not
//! read again on the paths we use. PaliGemma-3B in `q8_0` went from 6.6 GB after load to 9.3 GB
//! from the first request on, and that request paid for the repack (benches/RESULTS.md, "CPU
//! memory of the quantized decoders").
//!
//! So at load each matrix is repacked right away (one probe matmul) and the pages of its
//! original are handed back to the kernel. Which copy candle reads is candle's choice, so it is
//! checked, not assumed: the probes run again after the release and must give the same bits.
//! If they do not, candle was still reading the original, and the matrix is quantized again
//! and kept whole. A wrong guess therefore costs load time, never a wrong answer.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};

use crate::error::Result;

/// Below this many bytes a matrix has few whole pages to give back. The probes cost about what a
/// matrix's share of one prompt costs, so any larger matrix is worth them (and the test models'
/// matrices are large enough to take this path).
const MIN_RELEASE_BYTES: usize = 64 << 10;

/// Rows of the probes: decode's single row, and a prompt's block at the one row-count threshold
/// candle's x86 kernels have (AMX takes `q4k` prompts from 32 rows).
const PROBE_ROWS: [usize; 2] = [1, 32];

/// What happened to one quantized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Repacked, and the original's pages handed back.
    Released,
    /// Left as candle keeps it: this CPU, dtype or shape is not one that candle repacks
    /// without reading the original again, or the matrix is small.
    Kept,
    /// Released, but the probes changed, so it was quantized again and kept whole.
    Rebuilt,
    /// Not candle's at all: repacked into our VNNI panels ([`super::int8_panels`] for `q8_0`,
    /// [`super::int4_panels`] for `q4k`), and candle's blocks dropped.
    Int8Panels,
}

/// Repacks `qm` now and releases its original when candle will only read the repacked tiles;
/// `rebuild` quantizes the matrix again, for when the check after the release fails.
pub fn release_original(qm: QMatMul, rebuild: impl FnOnce() -> Result<QMatMul>) -> Result<(QMatMul, Outcome)> {
    let QMatMul::QTensor(qt) = &qm else { return Ok((qm, Outcome::Kept)) };
    let Ok((n, k)) = qt.shape().dims2() else { return Ok((qm, Outcome::Kept)) };
    if !qt.device().is_cpu() || qt.storage_size_in_bytes() < MIN_RELEASE_BYTES || !candle_repacks(qt.dtype(), n, k) {
        return Ok((qm, Outcome::Kept));
    }
    release_checked(qm, k, rebuild)
}

/// Releases the original of `qm` after making candle repack it, and keeps the release only if
/// the probes give the same bits afterwards.
fn release_checked(qm: QMatMul, k: usize, rebuild: impl FnOnce() -> Result<QMatMul>) -> Result<(QMatMul, Outcome)> {
    let probes = PROBE_ROWS.iter().map(|&m| probe_input(m, k)).collect::<Result<Vec<_>>>()?;
    // The first matmul makes candle's repacked copy; these outputs come from it.
    let before = probes.iter().map(|x| output_bits(&qm, x)).collect::<Result<Vec<_>>>()?;
    if !discard_pages(&qm)? {
        return Ok((qm, Outcome::Kept));
    }
    let after = probes.iter().map(|x| output_bits(&qm, x)).collect::<Result<Vec<_>>>()?;
    if before == after {
        Ok((qm, Outcome::Released))
    } else {
        drop(qm);
        Ok((rebuild()?, Outcome::Rebuilt))
    }
}

/// Whether candle 0.11.1 takes this matrix through its repacked x86 kernels for every row count
/// (its `repack_x86::select`, `level` and `amx_available`): `q8_0` needs VNNI (AVX2's
/// `maddubs` would overflow), `q4k` any AVX2 CPU without AMX, whose `q4k` prompts repack from
/// the original again. The probes in [`release_original`] check the answer.
pub(crate) fn candle_repacks(dtype: GgmlDType, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const TILE_N: usize = 16;
        const SUPERBLOCK: usize = 256;
        if k == 0 || !n.is_multiple_of(TILE_N) || !k.is_multiple_of(SUPERBLOCK) {
            return false;
        }
        let CpuKernels { vnni, avx2, amx } = *cpu_kernels();
        match dtype {
            GgmlDType::Q8_0 => vnni,
            GgmlDType::Q4K => (vnni || avx2) && !amx,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, n, k);
        false
    }
}

/// The kernel tiers candle 0.11.1 picks on this CPU (its `repack_x86::level` and
/// `amx_available`, environment overrides included), read once: [`candle_repacks`] runs on
/// every quantized matmul through [`super::q8_0::matmul`].
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct CpuKernels {
    vnni: bool,
    avx2: bool,
    amx: bool,
}

#[cfg(target_arch = "x86_64")]
fn cpu_kernels() -> &'static CpuKernels {
    static KERNELS: std::sync::OnceLock<CpuKernels> = std::sync::OnceLock::new();
    KERNELS.get_or_init(|| {
        let forced_avx2 = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
        let forced_avx_vnni = std::env::var("MISTRALRS_FORCE_AVXVNNI").as_deref() == Ok("1");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = !forced_avx2
            && ((is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || ((forced_avx_vnni || is_x86_feature_detected!("avxvnni")) && is_x86_feature_detected!("avx2")));
        // AMX tiles or int8 (CPUID leaf 7, EDX bits 24 and 25), read the way candle reads them.
        let edx = core::arch::x86_64::__cpuid_count(7, 0).edx;
        CpuKernels { vnni, avx2, amx: edx & (1 << 24) != 0 || edx & (1 << 25) != 0 }
    })
}

/// `[m, k]` of values in [-1, 1) from a fixed xorshift, so no row and no column is zero.
fn probe_input(m: usize, k: usize) -> Result<Tensor> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (m as u64) << 32 ^ k as u64;
    let values: Vec<f32> = (0..m * k)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(values, (m, k), &Device::Cpu)?)
}

fn output_bits(qm: &QMatMul, x: &Tensor) -> Result<Vec<u32>> {
    Ok(qm.forward(x)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
}

/// Hands the whole pages of `qm`'s original blocks back to the kernel; `false` where that is not
/// possible (not Linux, or the kernel refused), with nothing changed.
fn discard_pages(qm: &QMatMul) -> Result<bool> {
    let QMatMul::QTensor(qt) = qm else { return Ok(false) };
    let data = qt.data()?;
    let std::borrow::Cow::Borrowed(bytes) = data else { return Ok(false) };
    #[cfg(target_os = "linux")]
    {
        let Some((first, end)) = whole_pages(bytes) else { return Ok(false) };
        // SAFETY: [first, end) is whole pages inside the block storage of a live QTensor, so no
        // allocator metadata lies there. MADV_DONTNEED on private anonymous memory makes those
        // pages read as zeros from now on; zero is a valid bit pattern of candle's plain-data
        // blocks. Nothing of ours reads the original after this, and whether candle does is
        // what the caller's probes check before the matrix is used.
        let r = unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
        Ok(r == 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
        Ok(false)
    }
}

/// The page-aligned address range `[first, end)` of the pages that lie wholly inside `bytes`.
#[cfg(target_os = "linux")]
fn whole_pages(bytes: &[u8]) -> Option<(usize, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let first = (bytes.as_ptr() as usize).div_ceil(page) * page;
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    (end > first).then_some((first, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::DType;

    fn weight(n: usize, k: usize) -> Tensor {
        let values: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 2003) as f32 / 1001.0) - 1.0).collect();
        Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap()
    }

    fn quantized(w: &Tensor, dtype: GgmlDType) -> QMatMul {
        QMatMul::from_qtensor(QTensor::quantize(w, dtype).unwrap()).unwrap()
    }

    /// Pages of the original that are still resident, by mincore.
    #[cfg(target_os = "linux")]
    fn resident_pages(qm: &QMatMul) -> usize {
        let QMatMul::QTensor(qt) = qm else { panic!("quantized") };
        let data = qt.data().unwrap();
        let (first, end) = whole_pages(&data).expect("the test matrices span many pages");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut vec = vec![0u8; (end - first) / page];
        // SAFETY: the range is mapped (it lies inside a live allocation) and `vec` has a byte
        // per page of it.
        let r = unsafe { libc::mincore(first as *mut libc::c_void, end - first, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn a_released_matrix_gives_the_same_products_and_frees_its_original() {
        // 4096 x 2048: 8.9 MB in q8_0, 4.7 MB in q4k.
        let w = weight(4096, 2048);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let kept = quantized(&w, dtype);
            let (released, outcome) = release_original(quantized(&w, dtype), || Ok(quantized(&w, dtype))).unwrap();
            let expected = if candle_repacks(dtype, 4096, 2048) { Outcome::Released } else { Outcome::Kept };
            assert_eq!(outcome, expected, "{dtype:?}");
            for m in [1, 3, 40, 266] {
                let x = probe_input(m, 2048).unwrap().affine(0.5, 0.1).unwrap();
                let want = kept.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                let got = released.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(got, want, "{dtype:?}, {m} rows");
            }
            #[cfg(target_os = "linux")]
            if outcome == Outcome::Released {
                assert_eq!(resident_pages(&released), 0, "{dtype:?}: the original's pages are back with the kernel");
            }
        }
    }

    #[test]
    fn a_matrix_candle_reads_unpacked_is_rebuilt_not_corrupted() {
        // candle never repacks q4_0, so it reads the original and the check must catch that.
        let w = weight(4096, 2048);
        let q4_0 = || Ok(quantized(&w, GgmlDType::Q4_0));
        let want = output_bits(&q4_0().unwrap(), &probe_input(5, 2048).unwrap()).unwrap();
        let (qm, outcome) = release_checked(q4_0().unwrap(), 2048, q4_0).unwrap();
        let expected = if cfg!(target_os = "linux") { Outcome::Rebuilt } else { Outcome::Kept };
        assert_eq!(outcome, expected);
        assert_eq!(output_bits(&qm, &probe_input(5, 2048).unwrap()).unwrap(), want);
    }

    #[test]
    fn dense_and_small_matrices_are_kept() {
        let dense = QMatMul::Tensor(Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap());
        assert_eq!(release_original(dense, || unreachable!()).unwrap().1, Outcome::Kept);
        let small = quantized(&weight(128, 256), GgmlDType::Q8_0);
        assert_eq!(release_original(small, || unreachable!()).unwrap().1, Outcome::Kept);
    }
}
