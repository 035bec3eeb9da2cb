//! One error type for the whole engine. Each variant carries what a user needs to fix the
//! problem (the field, the tensor and its shapes, the option), and maps to one stable code that
//! the Node binding exposes as `error.code`.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `config.json` is missing, unreadable, or describes an impossible model.
    #[error("invalid config: {field}: {message}")]
    Config { field: String, message: String },

    /// A weight file or tensor is missing, malformed or has the wrong shape.
    #[error("{0}")]
    Weights(String),

    /// A tensor exists but its shape is not the one the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },

    /// A tensor the model needs is not in any weight file.
    #[error("tensor `{name}` (expected shape {expected:?}) is missing from the checkpoint")]
    MissingTensor { name: String, expected: Vec<usize> },

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A request argument is out of range or inconsistent with the model.
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },

    /// An image could not be decoded or is outside the accepted limits.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// The tokenizer is missing or unusable.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A checkpoint to convert is malformed.
    #[error("conversion: {0}")]
    Convert(String),

    /// The requested compute device cannot be used.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),

    /// The request was cancelled by its caller.
    #[error("the operation was aborted")]
    Aborted,

    /// A failure inside the tensor library; a bug or resource exhaustion, not bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Stable, machine-readable error categories (the Node binding's `error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ModelLoad,
    InvalidArgument,
    InvalidImage,
    DeviceUnavailable,
    Aborted,
    Internal,
}

impl ErrorCode {
    /// The code string used across the JS API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ModelLoad => "ERR_MODEL_LOAD",
            ErrorCode::InvalidArgument => "ERR_INVALID_ARGUMENT",
            ErrorCode::InvalidImage => "ERR_INVALID_IMAGE",
            ErrorCode::DeviceUnavailable => "ERR_DEVICE_UNAVAILABLE",
            ErrorCode::Aborted => "ABORT_ERR",
            ErrorCode::Internal => "ERR_INTERNAL",
        }
    }
}

impl Error {
    /// The stable category of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Config { .. }
            | Error::Weights(_)
            | Error::TensorShape { .. }
            | Error::MissingTensor { .. }
            | Error::Io { .. }
            | Error::Tokenizer(_)
            | Error::Convert(_) => ErrorCode::ModelLoad,
            Error::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Error::InvalidImage(_) => ErrorCode::InvalidImage,
            Error::DeviceUnavailable(_) => ErrorCode::DeviceUnavailable,
            Error::Aborted => ErrorCode::Aborted,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { field: field.into(), message: message.into() }
    }

    pub(crate) fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { name: name.into(), message: message.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set:
/// users get the cause.
pub(crate) fn candle_cause(e: &candle_core::Error) -> String {
    let text = e.to_string();
    text.split("\n   0:").next().unwrap_or(&text).trim_end().to_string()
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Internal(candle_cause(&e))
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
