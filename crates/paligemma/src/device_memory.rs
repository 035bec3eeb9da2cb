//! How the CUDA allocator keeps freed memory between requests.
//!
//! candle allocates every activation with `cuMemAllocAsync`, from the device's default memory
//! pool. That pool's release threshold is 0 by default: at every synchronisation (one per
//! generated token, when the chosen id is read) it hands freed memory back to the driver, and
//! the next prefill or eager decode step maps it again.
//!
//! Keeping it (threshold "everything", as PyTorch's caching allocator does in effect) was
//! measured on an H100 against the default and gained nothing: time to first token 13.4 ms kept
//! against 11.1 ms released, decode 2.46 against 2.42 ms/token (`benches/RESULTS.md`). So the
//! driver's default stays, and memory other processes could use is not held.
//! `PALIGEMMA_CUDA_MEMPOOL=keep` opts in (for A/B timing); a model that kept the pool gives the
//! unused memory back when it is dropped. On the CPU all of this is a no-op.

use candle_core::Device;

/// Held by a loaded model; on drop (after the model's own tensors, being its last field) it
/// returns the pool's unused memory to the driver.
pub struct PoolRetention {
    #[cfg(feature = "cuda")]
    device: Option<Device>,
}

impl PoolRetention {
    /// Makes `device`'s default pool keep freed memory when `PALIGEMMA_CUDA_MEMPOOL=keep`.
    /// A driver that refuses leaves the default in place: this is tuning, not correctness.
    pub fn new(device: &Device) -> Self {
        #[cfg(feature = "cuda")]
        {
            let keep = std::env::var("PALIGEMMA_CUDA_MEMPOOL").is_ok_and(|v| v == "keep");
            let kept = matches!(device, Device::Cuda(_)) && keep && cuda::set_release_threshold(device, u64::MAX).is_ok();
            PoolRetention { device: kept.then(|| device.clone()) }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            PoolRetention {}
        }
    }
}

impl Drop for PoolRetention {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(device) = self.device.take() {
            // Nothing to report to: a model being dropped cannot fail, and memory the pool
            // keeps is still reused by the next model on this device.
            let _ = cuda::trim(&device);
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    use crate::error::{Error, Result};

    fn driver(what: &str, e: impl std::fmt::Debug) -> Error {
        Error::Internal(format!("CUDA {what}: {e:?}"))
    }

    fn default_pool(device: &Device) -> Result<sys::CUmemoryPool> {
        let Device::Cuda(dev) = device else {
            return Err(Error::Internal("a memory pool needs a CUDA device".into()));
        };
        let stream = dev.cuda_stream();
        let context = stream.context();
        context.bind_to_thread().map_err(|e| driver("bind context", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) }
            .result()
            .map_err(|e| driver("default memory pool", e))?;
        Ok(pool)
    }

    pub(super) fn set_release_threshold(device: &Device, bytes: u64) -> Result<()> {
        let pool = default_pool(device)?;
        let mut value = bytes;
        // SAFETY: the release threshold attribute takes a pointer to a u64 (cuuint64_t).
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut value as *mut u64).cast(),
            )
        }
        .result()
        .map_err(|e| driver("set pool release threshold", e))
    }

    /// Waits for pending frees on the device's stream, then releases what the pool holds unused.
    pub(super) fn trim(device: &Device) -> Result<()> {
        let Device::Cuda(dev) = device else { return Ok(()) };
        dev.cuda_stream().synchronize().map_err(|e| driver("synchronize", e))?;
        let pool = default_pool(device)?;
        // SAFETY: a valid pool handle; trimming only releases memory no allocation uses.
        unsafe { sys::cuMemPoolTrimTo(pool, 0) }.result().map_err(|e| driver("trim pool", e))
    }
}
