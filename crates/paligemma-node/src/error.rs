//! Failures as they cross into JS: a stable `code` plus a message the user can act on.
//!
//! Asynchronous results never reject on the native side. They resolve with a [`NativeFailure`]
//! value instead, and the TypeScript layer turns it into a `PaliGemmaError` (or `AbortError`)
//! created on the JS thread, so the error carries a JS stack and the right class. Synchronous
//! native errors (rare: a panic at an entry point, a disposed model) are thrown with the code as
//! a `CODE: ` prefix of the message, which the TS layer parses back.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use napi_derive::napi;

/// Error codes of the JS API. The core's codes come from `paligemma::ErrorCode::as_str`; the
/// binding adds the one it alone can detect.
pub(crate) const ERR_DISPOSED: &str = "ERR_DISPOSED";
pub(crate) const ERR_INTERNAL: &str = "ERR_INTERNAL";
pub(crate) const ERR_INVALID_ARGUMENT: &str = "ERR_INVALID_ARGUMENT";
pub(crate) const ABORT_ERR: &str = "ABORT_ERR";

/// A failed native operation, delivered as a value.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct NativeFailure {
    /// One of ERR_MODEL_LOAD, ERR_INVALID_ARGUMENT, ERR_INVALID_IMAGE, ERR_DEVICE_UNAVAILABLE,
    /// ERR_DISPOSED, ABORT_ERR, ERR_INTERNAL.
    pub code: String,
    pub message: String,
}

impl NativeFailure {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        NativeFailure { code: code.to_string(), message: message.into() }
    }

    pub(crate) fn invalid(name: &str, message: impl std::fmt::Display) -> Self {
        Self::new(ERR_INVALID_ARGUMENT, format!("invalid argument `{name}`: {message}"))
    }

    pub(crate) fn aborted() -> Self {
        Self::new(ABORT_ERR, "the operation was aborted")
    }

    pub(crate) fn disposed() -> Self {
        Self::new(ERR_DISPOSED, "the model was disposed; load it again to run more requests")
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(ERR_INTERNAL, format!("internal error: {message}"))
    }

    /// Maps a core error. `disposed` tells an abort caused by `dispose()` apart from one the
    /// caller asked for, because the two need different handling in user code.
    pub(crate) fn from_core(error: &paligemma::Error, disposed: bool) -> Self {
        match error {
            paligemma::Error::Aborted if disposed => Self::disposed(),
            paligemma::Error::Aborted => Self::aborted(),
            other => Self::new(other.code().as_str(), other.to_string()),
        }
    }

    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        Self::internal(format!("the native engine panicked: {}", panic_message(&payload)))
    }

    /// The synchronous-throw form (see the module docs).
    pub(crate) fn into_napi(self) -> napi::Error {
        napi::Error::new(napi::Status::GenericFailure, format!("{}: {}", self.code, self.message))
    }
}

fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs a native entry point so that a panic becomes an ERR_INTERNAL JS error instead of
/// unwinding into the N-API frame (which would abort the process).
pub(crate) fn guard<T>(f: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(NativeFailure::from_panic(payload).into_napi()),
    }
}
