//! Shared harness code for the cargo-fuzz targets (see `harness.rs`).
pub mod harness;
