//! The fuzz harnesses, one function per target. Each takes the raw fuzz input, drives the
//! public API the way a caller with untrusted bytes would, and checks invariants with `assert!`:
//! errors are fine, panics are bugs.
//!
//! This file is compiled twice: by the cargo-fuzz targets in `fuzz/fuzz_targets/` and, through
//! `#[path]`, by `crates/paligemma/tests/fuzz_regressions.rs`, which replays committed inputs
//! with plain `cargo test`. It must therefore depend on nothing but `paligemma` and `std`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use paligemma::config::Config;
use paligemma::convert::{read_npy_header, NpzArchive};
use paligemma::image::{preprocess, DecodeOptions, ImageInput};
use paligemma::{DType, Device, LoadMonitor, Weights};

/// Inputs larger than this are ignored by the file-backed harness, so a run stays fast even
/// when `-max_len` is raised.
pub const SAFETENSORS_MAX_INPUT: usize = 2 << 20;
/// Tensors materialised per input (each one is copied and widened to f32).
pub const SAFETENSORS_MAX_TENSORS: usize = 256;
/// Arrays whose data is bigger than this are listed but not read.
pub const NPZ_MAX_ARRAY_BYTES: u64 = 8 << 20;
/// Arrays read per input.
pub const NPZ_MAX_ARRAYS: usize = 64;
/// The pixel limit used for image inputs.
pub const IMAGE_MAX_PIXELS: u64 = 4_000_000;
/// The model resolution the image harness resizes to.
pub const IMAGE_SIZE: u32 = 32;

/// A folder private to this process and thread, created on first use and emptied per input.
fn scratch_dir(tag: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = std::env::temp_dir().join(format!("paligemma-fuzz-{tag}-{}-{thread}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch folder");
    dir
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `safetensors_loader`: the first byte picks the mode.
///
/// * even: the rest of the input is `model.safetensors`.
/// * odd: the next two bytes (little-endian) are the length `n` of an index JSON; the following
///   `n` bytes (clamped to what is there) become `model.safetensors.index.json` and the
///   remainder `model.safetensors`, so the index can name `model.safetensors` (or itself, or a
///   missing shard).
///
/// Then every tensor is loaded with its own shape as f32 and mapped in place as a prepared
/// folder's tensor, plus a few deliberate misuses (wrong shape or length, missing name) that
/// must fail cleanly; the index bytes are also tried as a prepared folder's manifest.
pub fn safetensors_loader(data: &[u8]) {
    if data.is_empty() || data.len() > SAFETENSORS_MAX_INPUT {
        return;
    }
    let dir = scratch_dir("st");
    clear_dir(&dir);
    let (mode, rest) = (data[0], &data[1..]);
    let (index, model) = if mode & 1 == 1 {
        let n = rest.get(..2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        let rest = rest.get(2..).unwrap_or(&[]);
        let n = n.min(rest.len());
        (Some(&rest[..n]), &rest[n..])
    } else {
        (None, rest)
    };
    std::fs::write(dir.join("model.safetensors"), model).expect("cannot write the fuzz input");
    if let Some(index) = index {
        std::fs::write(dir.join("model.safetensors.index.json"), index).expect("cannot write the fuzz index");
    }

    let result = Weights::open(&dir);
    let Ok(weights) = result else {
        clear_dir(&dir);
        return;
    };
    let _ = format!("{weights:?}");
    let total = weights.total_bytes();
    let monitor_calls = std::sync::atomic::AtomicUsize::new(0);
    let on_progress = |loaded: u64, all: u64, _phase: paligemma::LoadPhase| {
        assert_eq!(all, total, "progress reports a total that differs from total_bytes()");
        assert!(loaded <= all, "progress reports {loaded} of {all} bytes");
        monitor_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let monitor = LoadMonitor { on_progress: Some(&on_progress), is_cancelled: None };
    let quiet = LoadMonitor { on_progress: None, is_cancelled: None };

    let mut names: Vec<String> = weights.names().map(str::to_string).collect();
    names.sort();
    for (i, name) in names.iter().take(SAFETENSORS_MAX_TENSORS).enumerate() {
        assert!(weights.contains(name));
        let shape = weights.shape_of(name).expect("a listed name has a shape").to_vec();
        let monitor = if i % 2 == 0 { &quiet } else { &monitor };
        if let Ok(t) = weights.get(name, &shape, DType::F32, &Device::Cpu, monitor) {
            assert_eq!(t.dims(), shape.as_slice(), "`{name}` loaded with another shape");
            assert_eq!(t.dtype(), DType::F32);
        }
        // A wrong expected shape must be an error, never a reinterpretation.
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(weights.get(name, &wrong, DType::F32, &Device::Cpu, &quiet).is_err());
        // Prepared folders use 1-D f32 tensors in place: a mapped tensor must read inside the
        // file, and any other length is refused.
        let len: usize = shape.iter().product();
        if let Ok(Some(mapped)) = weights.mapped_f32(name, &shape, &quiet) {
            assert_eq!(mapped.as_slice().len(), len);
            let _ = mapped.as_slice().iter().fold(0f32, |a, v| a + v);
        }
        assert!(!matches!(weights.mapped_f32(name, &[len + 1], &quiet), Ok(Some(_))), "`{name}` mapped with another length");
        // And their int8 panels as 1-D U8 tensors: read inside the file, of exactly the length
        // asked, and refused by the panels for any other shape.
        if let Ok(Some(bytes)) = weights.mapped_u8(name, len, &quiet) {
            assert_eq!(bytes.as_slice().len(), len);
            let _ = bytes.as_slice().iter().fold(0u8, |a, v| a ^ v);
            // One panel of 16 outputs takes 544 bytes per 32 inputs.
            let k = len / 544 * 32;
            if let Ok(panels) = paligemma::cpu::int8_panels::Int8Panels::from_mapped(bytes, 16, k) {
                assert_eq!(panels.matmul(&vec![0.5; k], 1).len(), 16);
            }
        }
        assert!(!matches!(weights.mapped_u8(name, len + 1, &quiet), Ok(Some(_))), "`{name}` mapped as U8 with another length");
    }
    // The same bytes as a prepared folder's manifest: refused or accepted, never a panic.
    if let Some(index) = index {
        std::fs::write(dir.join(paligemma::prepared::MANIFEST), index).expect("cannot write the fuzz manifest");
        let _ = paligemma::prepared::check(&dir, &paligemma::LoadOptions::default());
    }
    if let Some(name) = names.first() {
        let shape = weights.shape_of(name).unwrap_or(&[]).to_vec();
        let _ = weights.get(name, &shape, DType::BF16, &Device::Cpu, &quiet);
    }
    let missing = "\u{0}definitely-not-a-tensor";
    if !weights.contains(missing) {
        assert!(weights.get(missing, &[1], DType::F32, &Device::Cpu, &quiet).is_err());
    }
    let cancelled = || true;
    let cancel = LoadMonitor { on_progress: None, is_cancelled: Some(&cancelled) };
    if let Some(name) = names.first() {
        let shape = weights.shape_of(name).unwrap_or(&[]).to_vec();
        assert!(weights.get(name, &shape, DType::F32, &Device::Cpu, &cancel).is_err());
    }
    drop(weights);
    clear_dir(&dir);
}

/// `config_parse`: lossy UTF-8 → `Config::from_json_str`; a config that validates must also
/// produce its tensor manifest and parameter count without overflow or absurd allocation.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::from_json_str(&text) else { return };
    config.validate().expect("a parsed config validates again");
    let manifest = config.tensor_manifest();
    // Bounded by the validation limits: 3 + 16·512 vision + 3 + 11·512 text + 1 tensors.
    assert!(manifest.len() <= 3 + 16 * 512 + 2 + 3 + 11 * 512 + 1, "manifest of {} tensors", manifest.len());
    let mut count: u128 = 0;
    for spec in &manifest {
        assert!(!spec.shape.is_empty() && spec.shape.iter().all(|&d| d > 0), "`{}` has shape {:?}", spec.name, spec.shape);
        count += spec.shape.iter().map(|&d| d as u128).product::<u128>();
    }
    assert!(count <= usize::MAX as u128, "parameter count {count} overflows usize");
    assert_eq!(config.parameter_count() as u128, count);
    assert_eq!(config.text.layer_types.len(), config.text.num_hidden_layers);
    assert!(config.num_image_tokens() < config.text.max_position_embeddings);
}

/// `npz_reader`: the raw bytes as a lone `.npy` header, then as a `.npz` archive whose arrays
/// are read whole, widened, sliced, sliced out of bounds and streamed.
pub fn npz_reader(data: &[u8]) {
    if let Ok(header) = read_npy_header(&mut &data[..], "fuzz") {
        assert!(header.data_bytes().is_some());
        assert!(header.data_offset as usize <= data.len());
    }

    let Ok(mut archive) = NpzArchive::from_bytes(data) else { return };
    let arrays: Vec<_> = archive.arrays().cloned().collect();
    for info in arrays.iter().take(NPZ_MAX_ARRAYS) {
        assert_eq!(archive.get(&info.name), Some(info));
        if info.nbytes() > NPZ_MAX_ARRAY_BYTES {
            continue;
        }
        if let Ok(bytes) = archive.read_bytes(&info.name) {
            assert_eq!(bytes.len() as u64, info.nbytes(), "`{}`: read_bytes length", info.name);
        }
        if let Ok(values) = archive.read_f32(&info.name) {
            assert_eq!(values.len(), info.numel(), "`{}`: read_f32 length", info.name);
        }
        let esize = info.dtype.size();
        match info.shape.first() {
            Some(&rows) if rows > 0 => {
                let inner: usize = info.shape[1..].iter().product();
                for row in [0, rows / 2, rows - 1] {
                    if let Ok(slice) = archive.read_slice(&info.name, &[row]) {
                        assert_eq!(slice.len(), inner * esize, "`{}`: slice length", info.name);
                    }
                }
                let full: Vec<usize> = info.shape.iter().map(|&d| d.saturating_sub(1)).collect();
                if info.shape.iter().all(|&d| d > 0) {
                    if let Ok(one) = archive.read_slice(&info.name, &full) {
                        assert_eq!(one.len(), esize);
                    }
                }
                assert!(archive.read_slice(&info.name, &[rows]).is_err(), "`{}`: row {rows} is out of bounds", info.name);
            }
            _ => {}
        }
        let too_deep = vec![0usize; info.shape.len() + 1];
        assert!(archive.read_slice(&info.name, &too_deep).is_err());
        let _ = archive.stream(&info.name, |r| {
            let mut buf = [0u8; 4096];
            let mut left = info.nbytes();
            while left > 0 {
                let n = r.read(&mut buf).map_err(|e| paligemma::Error::Convert(e.to_string()))?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n as u64);
            }
            Ok(())
        });
    }
    assert!(archive.read_bytes("\u{0}not-an-array").is_err());
}

/// `image_decode`: the first byte holds flags (bit 0: apply EXIF orientation; bit 1: fill the
/// raw buffer to the declared size; bit 2: resize to 3×3 instead of 32×32); the rest is an
/// encoded image. The same bytes are also fed as raw pixels with `width` = bytes 1–2 and
/// `height` = bytes 3–4 (little-endian), `channels` = byte 5 and the pixels after that.
pub fn image_decode(data: &[u8]) {
    let Some((&flags, payload)) = data.split_first() else { return };
    let opts = DecodeOptions { max_pixels: IMAGE_MAX_PIXELS, apply_exif_orientation: flags & 1 == 1 };
    let size = if flags & 4 == 4 { 3 } else { IMAGE_SIZE };
    check_preprocessed(&ImageInput::Encoded(payload), size, &opts);

    if payload.len() < 5 {
        return;
    }
    let width = u16::from_le_bytes([payload[0], payload[1]]) as u32;
    let height = u16::from_le_bytes([payload[2], payload[3]]) as u32;
    let channels = payload[4];
    let pixels = &payload[5..];
    let filled;
    let raw = if flags & 2 == 2 && width <= 1024 && height <= 1024 && channels <= 4 && !pixels.is_empty() {
        let need = width as usize * height as usize * channels as usize;
        filled = pixels.iter().copied().cycle().take(need).collect::<Vec<u8>>();
        &filled[..]
    } else {
        pixels
    };
    check_preprocessed(&ImageInput::Raw { data: raw, width, height, channels }, size, &opts);
}

fn check_preprocessed(input: &ImageInput, size: u32, opts: &DecodeOptions) {
    let Ok(out) = preprocess(input, size, opts) else { return };
    assert_eq!(out.pixel_values.len(), 3 * size as usize * size as usize);
    assert!(out.width > 0 && out.height > 0);
    assert!(u64::from(out.width) * u64::from(out.height) <= opts.max_pixels, "{}×{} passed the limit", out.width, out.height);
    assert!(out.pixel_values.iter().all(|v| (-1.0..=1.0).contains(v)), "pixel values outside [-1, 1]");
}
