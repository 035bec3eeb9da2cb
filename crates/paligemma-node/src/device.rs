//! The one place where the compute device and dtype are chosen.

use paligemma::{DType, Device, Quantization};

use crate::error::NativeFailure;

const ERR_DEVICE_UNAVAILABLE: &str = "ERR_DEVICE_UNAVAILABLE";

/// Resolves the `device` load option. Runs on the model's worker thread, which then owns the
/// device for the model's lifetime.
pub(crate) fn select_device(requested: &str) -> Result<Device, NativeFailure> {
    match requested {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(),
        // The CPU build has nothing else to pick; a CUDA build prefers the GPU and falls back.
        "auto" => Ok(auto()),
        other => Err(NativeFailure::invalid("device", format!("`{other}` is not one of 'auto', 'cpu', 'cuda'"))),
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device, NativeFailure> {
    Device::new_cuda(0).map_err(|e| {
        NativeFailure::new(ERR_DEVICE_UNAVAILABLE, format!("device unavailable: cannot open CUDA device 0: {e}"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device, NativeFailure> {
    Err(NativeFailure::new(
        ERR_DEVICE_UNAVAILABLE,
        "device unavailable: this build of the paligemma addon has no CUDA support; use device: 'cpu' \
         (or 'auto'), or install a CUDA build",
    ))
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

/// Resolves the `dtype` load option into a compute dtype and an optional quantization of the
/// decoder ('q8_0', 'q4k': CPU only, f32 activations).
pub(crate) fn select_precision(requested: Option<&str>, device: &Device) -> Result<(DType, Option<Quantization>), NativeFailure> {
    match requested {
        Some(q @ ("q8_0" | "q4k")) => {
            if !device.is_cpu() {
                return Err(NativeFailure::invalid("dtype", format!("'{q}' is a CPU mode; on a GPU use 'bf16' or 'f16'")));
            }
            let quantization = q.parse::<Quantization>().map_err(|e| NativeFailure::invalid("dtype", e.to_string()))?;
            Ok((DType::F32, Some(quantization)))
        }
        other => Ok((select_dtype(other, device)?, None)),
    }
}

/// Resolves the `dtype` load option; the default is f32 on the CPU (candle has no CPU bf16
/// matmul) and bf16 on a GPU.
pub(crate) fn select_dtype(requested: Option<&str>, device: &Device) -> Result<DType, NativeFailure> {
    match requested {
        None if device.is_cpu() => Ok(DType::F32),
        None => Ok(DType::BF16),
        Some("f32") => Ok(DType::F32),
        Some("f16") => Ok(DType::F16),
        Some("bf16") => Ok(DType::BF16),
        Some(other) => Err(NativeFailure::invalid("dtype", format!("`{other}` is not one of 'f32', 'f16', 'bf16', 'q8_0', 'q4k'"))),
    }
}

pub(crate) fn device_name(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else if device.is_cuda() {
        "cuda"
    } else {
        "metal"
    }
}

pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}
