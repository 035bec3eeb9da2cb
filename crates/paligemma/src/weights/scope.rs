//! Prefixes into [`Weights`] that the model's modules load their tensors through.

use candle_core::{DType, Device, Tensor};

use super::{LoadMonitor, MappedF32, RawTensor, Recorded, Weights};
use crate::error::Result;

/// A prefix into [`Weights`] with a target dtype and device, in the style of candle's
/// `VarBuilder` but with errors that name the tensor and both shapes.
#[derive(Clone, Copy)]
pub struct WeightPath<'a> {
    weights: &'a Weights,
    prefix: &'a str,
    dtype: DType,
    device: &'a Device,
    monitor: &'a LoadMonitor<'a>,
}

/// Owned variant used to build nested prefixes.
pub struct Scope<'a> {
    weights: &'a Weights,
    prefix: String,
    dtype: DType,
    device: &'a Device,
    monitor: &'a LoadMonitor<'a>,
    bf16_matrices: bool,
}

impl<'a> Scope<'a> {
    pub fn new(weights: &'a Weights, dtype: DType, device: &'a Device, monitor: &'a LoadMonitor<'a>) -> Self {
        Scope { weights, prefix: String::new(), dtype, device, monitor, bf16_matrices: false }
    }
    /// The same scope, whose dense f32 matrices on the CPU are held in bf16 where the CPU
    /// multiplies bf16 ([`crate::layers::Layout::Bf16Panels`]); activations stay f32.
    pub fn with_bf16_matrices(self, on: bool) -> Self {
        Scope { bf16_matrices: on, ..self }
    }
    /// Whether dense matrices are asked for in bf16 ([`Scope::with_bf16_matrices`]).
    pub fn bf16_matrices(&self) -> bool {
        self.bf16_matrices
    }
    /// A nested scope `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { weights: self.weights, prefix, dtype: self.dtype, device: self.device, monitor: self.monitor, bf16_matrices: self.bf16_matrices }
    }
    /// Loads `prefix.name` with the given shape.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.path().get(shape, name)
    }
    /// Passes the checked bytes of `prefix.name` to `convert` (see [`Weights::with_raw`]).
    pub fn with_raw<R>(&self, shape: &[usize], name: &str, convert: impl FnOnce(RawTensor<'_>) -> Result<R>) -> Result<R> {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        self.weights.with_raw(&full, shape, self.monitor, convert)
    }
    /// This scope's prefix (a canonical tensor name without its last part).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The f32 tensor `name` (a full canonical name) of `shape`, mapped in place, if the
    /// checkpoint has it (a prepared folder; see [`Weights::mapped_f32`]).
    pub fn mapped_f32(&self, name: &str, shape: &[usize]) -> Result<Option<MappedF32>> {
        self.weights.mapped_f32(name, shape, self.monitor)
    }
    /// The U8 tensor `name` (a full canonical name) of `len` bytes, mapped in place
    /// ([`Weights::mapped_u8`]).
    pub fn mapped_u8(&self, name: &str, len: usize) -> Result<Option<super::MappedBytes>> {
        self.weights.mapped_u8(name, len, self.monitor)
    }
    /// Reports that `phase` starts ([`Weights::report_phase`]).
    pub fn report_phase(&self, phase: super::LoadPhase) {
        self.weights.report_phase(self.monitor, phase)
    }
    /// Whether the checkpoint has the tensor `name` (a full canonical name).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
    /// Whether this load is being recorded for a prepared folder.
    pub fn is_recording(&self) -> bool {
        self.weights.is_recording()
    }
    /// The stored bytes of the U8 tensor `name` (a full canonical name) passed to `f`, if the
    /// checkpoint has it ([`Weights::with_stored_bytes`]).
    pub fn with_stored_bytes<R>(&self, name: &str, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<Option<R>> {
        self.weights.with_stored_bytes(name, self.monitor, f)
    }
    /// Adds a tensor the load produced to the record, when recording ([`Weights::record`]).
    pub fn record(&self, name: &str, tensor: impl FnOnce() -> Recorded) {
        self.weights.record(name, tensor)
    }
    /// Loads `prefix.name` in an explicit dtype (e.g. norms kept in f32).
    pub fn get_as(&self, shape: &[usize], name: &str, dtype: DType) -> Result<Tensor> {
        WeightPath { dtype, ..self.path() }.get(shape, name)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &'a Device {
        self.device
    }
    fn path(&self) -> WeightPath<'_> {
        WeightPath { weights: self.weights, prefix: &self.prefix, dtype: self.dtype, device: self.device, monitor: self.monitor }
    }
}

impl<'a> WeightPath<'a> {
    fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        self.weights.get(&full, shape, self.dtype, self.device, self.monitor)
    }
}
