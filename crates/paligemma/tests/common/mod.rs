//! Helpers shared by the integration tests: fixture discovery and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// The repository's `testdata/` folder.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Every reference folder: `testdata/reference/*` plus `PALIGEMMA_REFERENCE_DIRS` (colon-separated).
pub fn reference_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("reference"))
        .expect("testdata/reference must exist")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if let Ok(extra) = std::env::var("PALIGEMMA_REFERENCE_DIRS") {
        dirs.extend(extra.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    assert!(!dirs.is_empty(), "no reference folders found: the parity test would test nothing");
    dirs
}

pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect()
}

pub fn floats(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

/// max |a − b| over two tensors of the same number of elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (floats(a), floats(b));
    assert_eq!(a.len(), b.len(), "element counts differ");
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
