//! Where a model runs and in what precision: the `device` and `dtype` a caller names become a
//! candle [`Device`] and [`DType`] (plus the decoder's quantization), and an `auto` request that
//! could not use the GPU of a CUDA build says why, so the caller can tell its user.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::layers::Quantization;

/// The device a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The first CUDA GPU when this build has CUDA and one can be opened, else the CPU.
    Auto,
    Cpu,
    /// The first CUDA GPU, or [`Error::DeviceUnavailable`].
    Cuda,
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda),
            other => Err(Error::invalid("device", format!("`{other}` is not one of 'auto', 'cpu', 'cuda'"))),
        }
    }
}

/// What a [`DeviceRequest`] resolved to.
#[derive(Debug)]
pub struct ChosenDevice {
    pub device: Device,
    /// Why an `auto` request runs on the CPU although this build has CUDA (no driver, no GPU,
    /// `CUDA_VISIBLE_DEVICES` empty, …). `None` whenever the request got what it asked for,
    /// including `auto` on a CPU-only build, which has nothing to fall back from.
    pub fallback: Option<String>,
}

/// Opens the device `request` names. Only `cuda` fails: `auto` falls back to the CPU.
pub fn choose_device(request: DeviceRequest) -> Result<ChosenDevice> {
    let exactly = |device| ChosenDevice { device, fallback: None };
    match request {
        DeviceRequest::Cpu => Ok(exactly(Device::Cpu)),
        DeviceRequest::Cuda => open_cuda().map(exactly).map_err(Error::DeviceUnavailable),
        DeviceRequest::Auto => Ok(auto_from(open_cuda(), cfg!(feature = "cuda"))),
    }
}

/// `auto`'s choice from the outcome of opening the GPU; split out so that a CPU-only test run
/// can check the fallback of a CUDA build.
fn auto_from(gpu: Result<Device, String>, cuda_built: bool) -> ChosenDevice {
    match gpu {
        Ok(device) => ChosenDevice { device, fallback: None },
        Err(why) => ChosenDevice {
            device: Device::Cpu,
            fallback: cuda_built.then(|| format!("device 'auto' runs on the CPU: this CUDA build {why}")),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, String> {
    let device = Device::new_cuda(0).map_err(|e| format!("cannot open CUDA device 0: {}", crate::error::candle_cause(&e)))?;
    if let Device::Cuda(gpu) = &device {
        let context = gpu.cuda_stream().context().clone();
        let (major, minor) = context.compute_capability().map_err(|e| format!("cannot query CUDA device 0: {e}"))?;
        let name = context.name().unwrap_or_else(|_| "unnamed GPU".into());
        check_compute_capability(&name, (major, minor), env!("PALIGEMMA_CUDA_COMPUTE_CAP"))?;
    }
    Ok(device)
}

/// The kernels are PTX for one compute capability, which the driver compiles for that GPU
/// generation and newer ones only: on an older GPU the first kernel would fail mid-load.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn check_compute_capability(gpu: &str, (major, minor): (i32, i32), built_for: &str) -> Result<(), String> {
    let target: i32 = built_for.parse().unwrap_or(0);
    if major * 10 + minor >= target {
        return Ok(());
    }
    Err(format!(
        "cannot run on CUDA device 0 ({gpu}, compute capability {major}.{minor}): its kernels are built for compute \
         capability {}.{} and newer (rebuild with scripts/build-cuda.sh and CUDA_COMPUTE_CAP={major}{minor})",
        target / 10,
        target % 10
    ))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, String> {
    Err("this build of paligemma has no CUDA support; use device 'cpu' (or 'auto'), or install a CUDA build".into())
}

/// The compute dtype and the decoder's quantization for a `dtype` option on `device`. The
/// default is f32 on the CPU (candle has no fast CPU bf16 matmul) and bf16 on a GPU; 'q8_0' and
/// 'q4k' quantize the decoder on load and run with f32 activations, on the CPU only.
pub fn choose_precision(requested: Option<&str>, device: &Device) -> Result<(DType, Option<Quantization>)> {
    let dtype = match requested {
        Some(q @ ("q8_0" | "q4k")) => {
            if !device.is_cpu() {
                return Err(Error::invalid("dtype", format!("'{q}' is a CPU mode; on a GPU use 'bf16' or 'f16'")));
            }
            return Ok((DType::F32, Some(q.parse::<Quantization>()?)));
        }
        None if device.is_cpu() => DType::F32,
        None => DType::BF16,
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => return Err(Error::invalid("dtype", format!("`{other}` is not one of 'f32', 'f16', 'bf16', 'q8_0', 'q4k'"))),
    };
    Ok((dtype, None))
}

/// [`crate::LoadOptions::vision_bf16`] for a `visionDtype` option: `'bf16'`, `'f32'` or absent.
pub fn choose_vision_precision(requested: Option<&str>) -> Result<Option<bool>> {
    match requested {
        None => Ok(None),
        Some("bf16") => Ok(Some(true)),
        Some("f32") => Ok(Some(false)),
        Some(other) => Err(Error::invalid("visionDtype", format!("`{other}` is not 'f32' or 'bf16'"))),
    }
}

/// `device`'s name as [`DeviceRequest`] spells it.
pub fn device_name(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else if device.is_cuda() {
        "cuda"
    } else {
        "metal"
    }
}

/// `dtype`'s name as [`choose_precision`] spells it (the float types a model runs in).
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_others_are_invalid_arguments() {
        assert_eq!("auto".parse::<DeviceRequest>().unwrap(), DeviceRequest::Auto);
        assert_eq!("cpu".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!("cuda".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda);
        let e = "tpu".parse::<DeviceRequest>().unwrap_err();
        assert_eq!(e.code().as_str(), "ERR_INVALID_ARGUMENT");
        assert_eq!(e.to_string(), "invalid argument `device`: `tpu` is not one of 'auto', 'cpu', 'cuda'");
    }

    #[test]
    fn auto_on_a_cuda_build_without_a_gpu_says_why_it_runs_on_the_cpu() {
        let chosen = auto_from(Err("cannot open CUDA device 0: DriverError(CUDA_ERROR_NO_DEVICE)".into()), true);
        assert!(chosen.device.is_cpu());
        assert_eq!(
            chosen.fallback.as_deref(),
            Some("device 'auto' runs on the CPU: this CUDA build cannot open CUDA device 0: DriverError(CUDA_ERROR_NO_DEVICE)")
        );
        // A CPU-only build has no GPU to miss: nothing to report.
        let cpu_build = auto_from(Err("no CUDA support".into()), false);
        assert!(cpu_build.device.is_cpu() && cpu_build.fallback.is_none());
        let gpu = auto_from(Ok(Device::Cpu), true);
        assert!(gpu.fallback.is_none());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_runs_auto_on_the_cpu_and_refuses_cuda() {
        let auto = choose_device(DeviceRequest::Auto).unwrap();
        assert!(auto.device.is_cpu() && auto.fallback.is_none());
        let e = choose_device(DeviceRequest::Cuda).unwrap_err();
        assert_eq!(e.code().as_str(), "ERR_DEVICE_UNAVAILABLE");
        assert!(e.to_string().starts_with("device unavailable: this build of paligemma has no CUDA support"), "{e}");
    }

    #[test]
    fn gpus_older_than_the_kernels_are_refused_by_name() {
        assert!(check_compute_capability("NVIDIA H200", (9, 0), "90").is_ok());
        assert!(check_compute_capability("NVIDIA B200", (10, 0), "90").is_ok());
        let e = check_compute_capability("NVIDIA A100-SXM4-80GB", (8, 0), "90").unwrap_err();
        assert_eq!(
            e,
            "cannot run on CUDA device 0 (NVIDIA A100-SXM4-80GB, compute capability 8.0): its kernels are built for \
             compute capability 9.0 and newer (rebuild with scripts/build-cuda.sh and CUDA_COMPUTE_CAP=80)"
        );
        // On a CUDA build, `auto` turns this into a CPU fallback that says so.
        let chosen = auto_from(Err(e), true);
        assert!(chosen.device.is_cpu() && chosen.fallback.unwrap().contains("A100"));
    }

    #[test]
    fn precision_defaults_by_device_and_quantization_is_cpu_only() {
        assert_eq!(choose_precision(None, &Device::Cpu).unwrap(), (DType::F32, None));
        assert_eq!(choose_precision(Some("bf16"), &Device::Cpu).unwrap(), (DType::BF16, None));
        assert_eq!(choose_precision(Some("q8_0"), &Device::Cpu).unwrap(), (DType::F32, Some(Quantization::Q8_0)));
        let e = choose_precision(Some("int4"), &Device::Cpu).unwrap_err();
        assert_eq!(e.to_string(), "invalid argument `dtype`: `int4` is not one of 'f32', 'f16', 'bf16', 'q8_0', 'q4k'");
    }
}
