use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::ErrorCode;

fn no_monitor() -> LoadMonitor<'static> {
    LoadMonitor { on_progress: None, is_cancelled: None }
}

/// A fresh, empty folder under the target dir (tests must not depend on /tmp layout).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-scratch/weights").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn get(w: &Weights, name: &str, shape: &[usize]) -> crate::Result<Tensor> {
    w.get(name, shape, DType::F32, &Device::Cpu, &no_monitor())
}

fn message(r: crate::Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("must fail");
    assert_eq!(e.code(), ErrorCode::ModelLoad, "{e}");
    e.to_string()
}

#[test]
fn names_from_every_transformers_version_normalise_to_one() {
    let cases = [
        ("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "vision_tower.encoder.layers.0.mlp.fc1.weight"),
        ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower.encoder.layers.0.mlp.fc1.weight"),
        ("model.vision_tower.vision_model.post_layernorm.bias", "vision_tower.post_layernorm.bias"),
        ("language_model.model.layers.3.self_attn.q_proj.weight", "language_model.layers.3.self_attn.q_proj.weight"),
        ("model.language_model.layers.3.self_attn.q_proj.weight", "language_model.layers.3.self_attn.q_proj.weight"),
        ("language_model.model.embed_tokens.weight", "language_model.embed_tokens.weight"),
        ("model.language_model.norm.weight", "language_model.norm.weight"),
        ("multi_modal_projector.linear.bias", "multi_modal_projector.linear.bias"),
        ("model.multi_modal_projector.linear.weight", "multi_modal_projector.linear.weight"),
    ];
    for (raw, canonical) in cases {
        assert_eq!(canonical_name(raw).as_deref(), Some(canonical), "{raw}");
    }
    for tied in ["lm_head.weight", "language_model.lm_head.weight", "model.lm_head.weight"] {
        assert_eq!(canonical_name(tied), if tied == "model.lm_head.weight" { Some(tied.to_string()) } else { None }, "{tied}");
    }
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let dir = scratch("sharded");
    let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
    let b = Tensor::new(&[7f32, 8.0], &Device::Cpu).unwrap();
    save(&dir.join("model-00001-of-00002.safetensors"), &[("language_model.model.norm.weight", b.clone())]);
    save(&dir.join("model-00002-of-00002.safetensors"), &[("vision_tower.vision_model.x.weight", a.clone())]);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 32}, "weight_map": {
            "language_model.model.norm.weight": "model-00001-of-00002.safetensors",
            "vision_tower.vision_model.x.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let w = Weights::open(&dir).unwrap();
    assert_eq!(w.total_bytes(), 32);
    assert_eq!(get(&w, "language_model.norm.weight", &[2]).unwrap().to_vec1::<f32>().unwrap(), vec![7.0, 8.0]);
    assert_eq!(get(&w, "vision_tower.x.weight", &[2, 3]).unwrap().to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
}

#[test]
fn an_index_naming_a_missing_shard_is_an_error() {
    let dir = scratch("missing-shard");
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"a": "model-00009-of-00009.safetensors"}}"#).unwrap();
    assert!(message(Weights::open(&dir)).contains("model-00009-of-00009.safetensors"));
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    assert!(message(Weights::open(&dir)).contains("plain file name"));
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"nothing": 1}"#).unwrap();
    assert!(message(Weights::open(&dir)).contains("weight_map"));
}

#[test]
fn a_folder_without_weights_says_what_it_expected() {
    let dir = scratch("empty");
    assert!(message(Weights::open(&dir)).contains("model.safetensors"));
}

#[test]
fn malformed_files_are_rejected_with_the_path() {
    let dir = scratch("malformed");
    let path = dir.join("model.safetensors");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero-byte file", vec![]),
        ("header longer than the file", {
            let mut v = 1_000_000u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }),
        ("header that is not JSON", {
            let mut v = 4u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"nope");
            v
        }),
        ("offsets past the data", {
            let header = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(header);
            v.extend_from_slice(&[0u8; 4]);
            v
        }),
        ("overlapping offsets", {
            let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(header);
            v.extend_from_slice(&[0u8; 12]);
            v
        }),
        ("unknown dtype", {
            let header = br#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,2]}}"#;
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(header);
            v.extend_from_slice(&[0u8; 2]);
            v
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, bytes).unwrap();
        let msg = message(Weights::open(&dir));
        assert!(msg.contains("model.safetensors"), "{what}: {msg}");
    }
}

#[test]
fn unsupported_but_valid_dtypes_fail_on_use_naming_the_tensor() {
    let dir = scratch("int-dtype");
    save(&dir.join("model.safetensors"), &[("language_model.model.norm.weight", Tensor::new(&[1i64, 2], &Device::Cpu).unwrap())]);
    let w = Weights::open(&dir).unwrap();
    let msg = message(get(&w, "language_model.norm.weight", &[2]));
    assert!(msg.contains("language_model.norm.weight") && msg.contains("I64"), "{msg}");
}

#[test]
fn missing_and_misshaped_tensors_name_tensor_and_shapes() {
    let dir = scratch("shapes");
    save(&dir.join("model.safetensors"), &[("language_model.model.norm.weight", Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap())]);
    let w = Weights::open(&dir).unwrap();
    match get(&w, "language_model.norm.weight", &[8]).unwrap_err() {
        Error::TensorShape { name, expected, found } => {
            assert_eq!((name.as_str(), expected, found), ("language_model.norm.weight", vec![8], vec![4]))
        }
        other => panic!("{other}"),
    }
    match get(&w, "language_model.embed_tokens.weight", &[10, 4]).unwrap_err() {
        e @ Error::MissingTensor { .. } => {
            let msg = e.to_string();
            assert!(msg.contains("language_model.embed_tokens.weight") && msg.contains("[10, 4]"), "{msg}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn the_same_tensor_under_two_names_is_ambiguous() {
    let dir = scratch("duplicate");
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    save(&dir.join("model.safetensors"), &[("language_model.model.norm.weight", t.clone()), ("model.language_model.norm.weight", t)]);
    assert!(message(Weights::open(&dir)).contains("appears twice"));
}

#[test]
fn half_precision_files_are_widened_exactly() {
    let dir = scratch("dtypes");
    let values = [0.5f32, -1.25, 3.0];
    let src = Tensor::new(&values, &Device::Cpu).unwrap();
    save(
        &dir.join("model.safetensors"),
        &[("a.bf16", src.to_dtype(DType::BF16).unwrap()), ("a.f16", src.to_dtype(DType::F16).unwrap())],
    );
    let w = Weights::open(&dir).unwrap();
    for name in ["a.bf16", "a.f16"] {
        assert_eq!(get(&w, name, &[3]).unwrap().to_vec1::<f32>().unwrap(), values.to_vec(), "{name}");
    }
    let as_f16 = w.get("a.bf16", &[3], DType::F16, &Device::Cpu, &no_monitor()).unwrap();
    assert_eq!(as_f16.dtype(), DType::F16);
}

#[test]
fn progress_reaches_the_total_and_cancellation_stops_loading() {
    let dir = scratch("progress");
    save(&dir.join("model.safetensors"), &[("a", Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()), ("b", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())]);
    let w = Weights::open(&dir).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let report = |done: u64, total: u64, phase: LoadPhase| seen.lock().unwrap().push((done, total, phase));
    let monitor = LoadMonitor { on_progress: Some(&report), is_cancelled: None };
    w.get("a", &[4], DType::F32, &Device::Cpu, &monitor).unwrap();
    w.get("b", &[2], DType::F32, &Device::Cpu, &monitor).unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&(24, 24, LoadPhase::Converting)));
    let cancelled = || true;
    let monitor = LoadMonitor { on_progress: None, is_cancelled: Some(&cancelled) };
    assert!(matches!(w.get("a", &[4], DType::F32, &Device::Cpu, &monitor), Err(Error::Aborted)));
}

#[test]
fn a_device_upload_reads_the_mapped_bytes_as_stored_and_declines_misaligned_ones() {
    // `upload` (the GPU path) run on the CPU device, against the host-tensor path.
    let values = [0.5f32, -1.25, 3.0, 1e-3, -7.5, 65504.0];
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let stored = Tensor::new(&values, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let le: Vec<u8> = match dtype {
            DType::F32 => stored.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::BF16 => stored.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => stored.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        // 8-aligned storage: offset 0 is aligned for every type, offset 1 for none.
        let mut words = vec![0u64; le.len() / 8 + 2];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        buf[..le.len()].copy_from_slice(&le);
        let raw = RawTensor { bytes: &buf[..le.len()], dtype };
        let uploaded = upload(&raw, &[6], &Device::Cpu).unwrap().expect("aligned bytes are uploaded");
        assert_eq!(uploaded.dtype(), dtype);
        assert_eq!(f32s(&uploaded), f32s(&Tensor::from_raw_buffer(&le, dtype, &[6], &Device::Cpu).unwrap()));
        assert!(upload(&raw, &[7], &Device::Cpu).is_err(), "{dtype:?}: a shape the bytes cannot hold");
        buf.copy_within(0..le.len(), 1);
        let shifted = RawTensor { bytes: &buf[1..=le.len()], dtype };
        assert!(upload(&shifted, &[6], &Device::Cpu).unwrap().is_none(), "{dtype:?}: misaligned bytes go the host way");
    }
}
