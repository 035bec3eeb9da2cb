//! Replays fuzz inputs through the same harness code the cargo-fuzz targets run (`fuzz/`), with
//! plain `cargo test`: every file under `testdata/fuzz-regressions/<target>/` is one input, and
//! the harness must return without panicking (errors are the expected outcome for most).
//!
//! The inputs are crashes the fuzzers found (named `crash-…`, kept after the fix) and a handful
//! of edge entries of the minimised corpora. Add a new crash by copying its
//! `fuzz/artifacts/<target>/crash-…` file into the matching folder.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/harness.rs"]
mod harness;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fuzz-regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Runs every input, reporting all that panic rather than stopping at the first.
fn replay(target: &str, run: fn(&[u8])) {
    let mut failures = Vec::new();
    let files = inputs(target);
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failures.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(failures.is_empty(), "{target}: {} of {} inputs panicked: {failures:?}", failures.len(), files.len());
}

#[test]
fn safetensors_loader() {
    replay("safetensors_loader", harness::safetensors_loader);
}

#[test]
fn config_parse() {
    replay("config_parse", harness::config_parse);
}

#[test]
fn npz_reader() {
    replay("npz_reader", harness::npz_reader);
}

#[test]
fn image_decode() {
    replay("image_decode", harness::image_decode);
}

/// `crash-zero-dim-stride-overflow`: a tensor of shape `[0, 2^40, 2^40]` has no elements, so
/// safetensors accepts it, but candle's contiguous strides multiply `2^40 · 2^40` and overflow
/// (a panic wherever overflow checks are on, as in the fuzz build). `Weights::open` now rejects
/// such shapes. Release builds wrap instead of panicking, so replaying the input above cannot
/// catch a regression there; this checks the rejection itself.
#[test]
fn zero_sized_tensor_with_overflowing_dimensions_is_rejected() {
    let dir = std::env::temp_dir().join(format!("paligemma-fuzz-regression-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = br#"{"big":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    std::fs::write(dir.join("model.safetensors"), &file).unwrap();
    let result = paligemma::Weights::open(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let err = result.expect_err("a shape whose dimensions overflow must be rejected");
    assert!(err.to_string().contains("`big`"), "{err}");
}
