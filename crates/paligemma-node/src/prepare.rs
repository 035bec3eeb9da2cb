//! `prepareModel(source, outDir, dtype) → Promise<NativePrepareReport | NativeFailure>`: writes
//! a prepared folder ([`paligemma::prepared`]) on libuv's thread pool. Like every asynchronous
//! result of this binding it resolves with a [`NativeFailure`] instead of rejecting; a panic
//! becomes ERR_INTERNAL.

use std::path::PathBuf;
use std::str::FromStr;

use napi::bindgen_prelude::{AsyncTask, Either};
use napi::{Env, Task};
use napi_derive::napi;
use paligemma::prepared::{self, PreparedDtype};
use paligemma::weights::LoadMonitor;

use crate::error::NativeFailure;
use crate::tools::run_guarded;

/// What `prepareModel` wrote.
#[napi(object)]
pub struct NativePrepareReport {
    pub tensors: u32,
    pub bytes: f64,
    pub files_copied: Vec<String>,
}

pub struct PrepareTask {
    source: PathBuf,
    out_dir: PathBuf,
    dtype: String,
}

impl Task for PrepareTask {
    type Output = Either<NativePrepareReport, NativeFailure>;
    type JsValue = Either<NativePrepareReport, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (source, out_dir, dtype) = (self.source.clone(), self.out_dir.clone(), self.dtype.clone());
        Ok(run_guarded(move || {
            let dtype = PreparedDtype::from_str(&dtype).map_err(|e| NativeFailure::from_core(&e, false))?;
            let monitor = LoadMonitor { on_progress: None, is_cancelled: None };
            let report = prepared::prepare(&source, &out_dir, dtype, monitor)
                .map_err(|e| NativeFailure::new(e.code().as_str(), format!("cannot prepare {}: {e}", source.display())))?;
            Ok(NativePrepareReport { tensors: report.tensors as u32, bytes: report.bytes as f64, files_copied: report.files_copied })
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

/// Writes a prepared folder of `source` (a Hugging Face folder) into `outDir`.
#[napi(catch_unwind, ts_return_type = "Promise<NativePrepareReport | NativeFailure>")]
pub fn prepare_model(source: String, out_dir: String, dtype: String) -> AsyncTask<PrepareTask> {
    AsyncTask::new(PrepareTask { source: PathBuf::from(source), out_dir: PathBuf::from(out_dir), dtype })
}
