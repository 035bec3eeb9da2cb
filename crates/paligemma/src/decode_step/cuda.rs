//! The CUDA side of the fixed-shape step: capturing a graph, and uploads into its buffers.

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaGraph, DevicePtr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{Device, Storage, Tensor};

use crate::error::{Error, Result};

fn driver(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Internal(format!("CUDA {what}: {e:?}"))
}

/// While the returned guard lives, candle keeps kernel parameter uploads in a device cache
/// (its own support for graph capture; a miss during capture is an error, not a stale copy).
pub(super) fn cache_kernel_parameters(device: &Device) -> Option<impl Drop> {
    match device {
        Device::Cuda(dev) => Some(dev.enable_cuda_graph_htod_cache()),
        _ => None,
    }
}

/// A captured decode step.
pub(super) struct Graph(CudaGraph);

// SAFETY: a graph must not be used from two threads at once. It lives in a `Session`, which
// needs `&mut` for every step, so it is used by one thread at a time; moving it between
// threads is allowed by the CUDA driver.
unsafe impl Send for Graph {}

impl Graph {
    pub(super) fn launch(&self) -> Result<()> {
        self.0.launch().map_err(|e| driver("graph launch", e))
    }
}

/// Captures what `body` launches on the device's stream. Every buffer `body` allocates must
/// be dropped inside it (the graph then frees it itself); results go into buffers that
/// existed before.
pub(super) fn capture(device: &Device, body: impl FnOnce() -> Result<()>) -> Result<Graph> {
    let Device::Cuda(dev) = device else {
        return Err(Error::Internal("a CUDA graph needs a CUDA device".into()));
    };
    let stream = dev.cuda_stream();
    // Relaxed: cuBLAS or the driver may call APIs that global mode forbids during capture.
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(|e| driver("begin capture", e))?;
    let body = body();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    body?;
    let graph = graph.map_err(|e| driver("end capture", e))?.ok_or_else(|| Error::Internal("CUDA capture recorded nothing".into()))?;
    graph.upload().map_err(|e| driver("graph upload", e))?;
    Ok(Graph(graph))
}

/// Copies `values` into the whole of `dst`, a contiguous CUDA buffer of the same dtype.
pub(super) fn memcpy_into<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(dst: &Tensor, values: &[T]) -> Result<()> {
    let (storage, layout) = dst.storage_and_layout();
    if layout.start_offset() != 0 || !layout.is_contiguous() || dst.elem_count() != values.len() {
        return Err(Error::Internal("upload needs a whole, contiguous buffer of the same size".into()));
    }
    let Storage::Cuda(cs) = &*storage else {
        return Err(Error::Internal("upload target is not on a CUDA device".into()));
    };
    let slice = cs.as_cuda_slice::<T>()?;
    let stream = slice.stream();
    let (ptr, _sync) = slice.device_ptr(stream);
    // SAFETY: `ptr` addresses `values.len()` elements of `T` (checked above); the copy is
    // ordered on the stream that every kernel of the step runs on.
    unsafe { result::memcpy_htod_async(ptr, values, stream.cu_stream()) }.map_err(|e| driver("upload", e))
}
