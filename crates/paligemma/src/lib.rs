//! PaliGemma and PaliGemma 2 inference, written from scratch on candle.
//!
//! The data path, one module per stage: [`image`] (bytes → pixels) → [`prompt`] (text → token
//! ids) → [`vision`] (SigLIP) → [`model`] (projector, embedding merge) → [`decoder`] (Gemma /
//! Gemma 2, [`attention`], [`kv_cache`], [`rotary`]) → logits → [`sampler`] → [`generate`](mod@generate) (the
//! loop) → text. [`config`] and [`weights`] describe and load a checkpoint, on the device and in
//! the precision that [`device`] chooses; [`convert`] turns Google's big_vision `.npz` files into
//! the Hugging Face layout. [`cpu`] and `cuda` hold the hand-written kernels that stand in for
//! candle's ops where those are far from the hardware.

pub mod attention;
pub mod batching;
pub mod config;
pub mod convert;
pub mod cpu;
pub(crate) mod cuda;
pub mod decode_step;
pub mod decoder;
pub mod device;
pub mod device_memory;
pub mod error;
pub mod files;
pub mod generate;
pub mod image;
pub mod kv_cache;
pub mod layers;
pub mod model;
pub mod prepared;
pub mod prompt;
pub mod render;
pub mod rotary;
pub mod sampler;
pub mod segmentation;
pub mod vision;
pub mod weights;

pub use candle_core::{DType, Device};
pub use config::{Architecture, Config, LayerType, TextConfig, VisionConfig};
pub use error::{Error, ErrorCode, Result};
pub use generate::{generate, generate_batch, Control, FinishReason, GenerateOutput, GenerateRequest, Timings};
pub use decode_step::StepMode;
pub use device::{choose_device, choose_precision, ChosenDevice, DeviceRequest};
pub use layers::Quantization;
pub use model::{LoadOptions, PaliGemma, Session};
pub use sampler::SamplingParams;
pub use weights::{LoadMonitor, LoadPhase, Weights};
