//! The activations: SigLIP's and Gemma's tanh GELU, Gemma's GeGLU, and the attention softmax.

use candle_core::{Module, Tensor};

use crate::cpu;
use crate::error::Result;

/// tanh-approximated GELU (`gelu_pytorch_tanh`). candle's `Activation::Gelu` is the erf version
/// and must not be used here (spec §2.2).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let cpu = cpu::with_f32_slice(x, |v| Ok(Tensor::from_vec(cpu::activation::gelu_tanh(v), x.shape(), x.device())?))?;
    match cpu {
        Some(y) => Ok(y),
        None => Ok(candle_nn::Activation::GeluPytorchTanh.forward(x)?),
    }
}

/// GeGLU over a fused gate/up projection `[…, 2·hidden]`: `gelu_tanh(gate) ⊙ up`, `[…, hidden]`.
pub fn geglu(gate_up: &Tensor, hidden: usize) -> Result<Tensor> {
    let mut dims = gate_up.dims().to_vec();
    let rows = gate_up.elem_count() / (2 * hidden).max(1);
    if let Some(last) = dims.last_mut() {
        *last = hidden;
    }
    let geglu_cpu = |v: &[f32]| Ok(Tensor::from_vec(cpu::activation::geglu(v, rows, hidden), dims.as_slice(), gate_up.device())?);
    if let Some(y) = cpu::with_f32_slice(gate_up, geglu_cpu)? {
        return Ok(y);
    }
    if let Some(y) = crate::cuda::geglu(gate_up, hidden)? {
        return Ok(y);
    }
    let last = gate_up.rank() - 1;
    let gate = gate_up.narrow(last, 0, hidden)?;
    let up = gate_up.narrow(last, hidden, hidden)?;
    Ok((gelu_tanh(&gate)? * up)?)
}

/// Softmax over the last dimension, as one fused kernel (candle's generic `softmax` is five
/// kernels with slow reductions; on a GPU that dominated the 448 px prefill).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}
