//! Shared helpers: scratch folders, raw safetensors comparison, and an `.npz` writer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use paligemma::convert::{self, ConvertOptions, NpyDtype, NpzArchive};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::common::testdata;

pub fn fixture(name: &str) -> PathBuf {
    testdata().join("reference").join(name)
}

/// A fresh, empty scratch folder per test, removed when dropped.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("paligemma-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

pub fn with_config(name: &str) -> ConvertOptions {
    ConvertOptions { config_override: Some(fixture(name).join("config.json")), ..ConvertOptions::default() }
}

/// name → (dtype, shape, bytes) across every safetensors file of a folder.
pub type Raw = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

pub fn raw_tensors(files: &[PathBuf]) -> Raw {
    let mut out = Raw::new();
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let prev = out.insert(name.clone(), (format!("{:?}", view.dtype()), view.shape().to_vec(), view.data().to_vec()));
            assert!(prev.is_none(), "{name} appears twice");
        }
    }
    out
}

/// Asserts identical names, dtypes, shapes and bytes; returns the tensor count.
pub fn assert_same_tensors(got: &Raw, want: &Raw, what: &str) -> usize {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: tensor names differ");
    for (name, (dtype, shape, data)) in want {
        let (g_dtype, g_shape, g_data) = &got[name];
        assert_eq!((g_dtype, g_shape), (dtype, shape), "{what}: `{name}` dtype/shape");
        assert!(g_data == data, "{what}: `{name}` bytes differ");
    }
    want.len()
}

/// The original f32 tensors rounded to bf16, as raw tensors.
pub fn as_bf16(raw: &Raw) -> Raw {
    raw.iter()
        .map(|(name, (_, shape, data))| {
            let t = Tensor::from_raw_buffer(data, DType::F32, shape, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
            let bits: Vec<u8> = t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), ("BF16".to_string(), shape.clone(), bits))
        })
        .collect()
}

/// Rewrites an archive array by array: `edit(key, shape, values)` returns the new shape and
/// values, or `None` to drop the array.
pub fn rewrite_npz(
    src: &Path,
    dst: &Path,
    dtype: NpyDtype,
    method: CompressionMethod,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) {
    let mut archive = NpzArchive::open(src).unwrap();
    let arrays: Vec<_> = archive.arrays().cloned().collect();
    let mut entries = Vec::new();
    for info in arrays {
        let values = archive.read_f32(&info.name).unwrap();
        if let Some((shape, values)) = edit(convert::strip_key(&info.name), info.shape.clone(), values) {
            entries.push((format!("{}.npy", info.name), npy_bytes(dtype, &shape, &values)));
        }
    }
    write_zip(dst, method, &entries);
}

pub fn npy_bytes(dtype: NpyDtype, shape: &[usize], values: &[f32]) -> Vec<u8> {
    let mut bytes = convert::write_npy_header(dtype, shape);
    for &v in values {
        match dtype {
            NpyDtype::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
            NpyDtype::BF16 => bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            NpyDtype::F16 => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        }
    }
    bytes
}

pub fn write_zip(path: &Path, method: CompressionMethod, entries: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), SimpleFileOptions::default().compression_method(method)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}
