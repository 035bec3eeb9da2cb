//! The `.npy`/`.npz` reader and the VAE conversion, on synthetic and corrupted input.

use candle_core::DType;
use paligemma::convert::{self, NpyDtype, NpzArchive};
use paligemma::Error;
use zip::CompressionMethod;

use super::support::*;
use crate::common::*;

#[test]
fn arbitrary_bytes_never_panic() {
    let bytes = std::fs::read(fixture("pg1-tiny-a").join("checkpoint.npz")).unwrap();
    let exercise = |data: &[u8]| {
        if let Ok(mut archive) = NpzArchive::from_bytes(data) {
            let names: Vec<String> = archive.arrays().map(|a| a.name.clone()).collect();
            for name in names {
                let _ = archive.read_f32(&name);
                let _ = archive.read_slice(&name, &[0]);
            }
        }
    };
    for cut in (0..bytes.len()).step_by(997) {
        exercise(&bytes[..cut]);
    }
    // Deterministic byte flips over the headers and the central directory.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..400 {
        let mut data = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = if state.is_multiple_of(2) { (state >> 8) as usize % 4096 } else { bytes.len() - 1 - (state >> 8) as usize % 4096 };
            data[at] = (state >> 32) as u8;
        }
        exercise(&data);
    }
}

#[test]
fn npz_reader_reads_slices() {
    let key = "params/llm/layers/attn/kv_einsum/w";
    let (all, entry) = {
        let mut archive = NpzArchive::open(&fixture("pg2-tiny-a").join("checkpoint.npz")).unwrap();
        let info = archive.get(key).unwrap().clone();
        assert_eq!((info.dtype, info.shape.as_slice()), (NpyDtype::F32, &[3, 2, 2, 80, 24][..]));
        let all = archive.read_bytes(key).unwrap();
        let entry = npy_bytes(NpyDtype::F32, &info.shape, &archive.read_f32(key).unwrap());
        (all, entry)
    };
    // The same slices from a STORED (seek) and a DEFLATED (decompress-forward) entry.
    let dir = scratch("slices");
    for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
        let path = dir.join("kv.npz");
        write_zip(&path, method, &[(format!("{key}.npy"), entry.clone())]);
        let bytes = std::fs::read(&path).unwrap();
        let mut archive = NpzArchive::from_bytes(&bytes).unwrap();
        let unit = 2 * 80 * 24 * 4;
        assert_eq!(archive.read_slice(key, &[2, 1]).unwrap(), all[5 * unit..6 * unit], "{method:?}");
        assert_eq!(archive.read_slice(key, &[1]).unwrap(), all[2 * unit..4 * unit], "{method:?}");
        assert_eq!(archive.read_bytes(key).unwrap(), all, "{method:?}");
        assert!(archive.read_slice(key, &[3]).is_err());
        assert!(archive.read_slice(key, &[0, 2]).is_err());
    }
}

fn vae_entries(embed_dim: usize, tweak: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut specs: Vec<(String, Vec<usize>)> = vec![("_vq_vae._embedding".into(), vec![128, embed_dim])];
    let mut conv = |name: &str, shape: [usize; 4], out: usize| {
        specs.push((format!("{name}.weight"), shape.to_vec()));
        specs.push((format!("{name}.bias"), vec![out]));
    };
    conv("decoder.0", [128, embed_dim, 1, 1], 128);
    for block in ["decoder.2", "decoder.3"] {
        conv(&format!("{block}.net.0"), [128, 128, 3, 3], 128);
        conv(&format!("{block}.net.2"), [128, 128, 3, 3], 128);
        conv(&format!("{block}.net.4"), [128, 128, 1, 1], 128);
    }
    for (name, cin, cout) in [("decoder.4", 128, 128), ("decoder.6", 128, 64), ("decoder.8", 64, 32), ("decoder.10", 32, 16)] {
        conv(name, [cin, cout, 4, 4], cout);
    }
    conv("decoder.12", [1, 16, 1, 1], 1);
    conv("encoder.0", [16, 1, 3, 3], 16);
    specs
        .into_iter()
        .enumerate()
        .map(|(k, (name, mut shape))| {
            if tweak == Some(name.as_str()) {
                shape[0] += 1;
            }
            let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 31 + k) % 97) as f32 / 97.0 - 0.5).collect();
            // One bf16 array checks the widening to f32.
            let dtype = if name == "encoder.0.bias" { NpyDtype::BF16 } else { NpyDtype::F32 };
            (format!("{name}.npy"), npy_bytes(dtype, &shape, &values))
        })
        .collect()
}

#[test]
fn vae_converts_to_f32_safetensors_with_the_same_names() {
    let dir = scratch("vae");
    let npz = dir.join("vae-oid.npz");
    let entries = vae_entries(64, None);
    write_zip(&npz, CompressionMethod::Stored, &entries);
    let out = dir.join("vae.safetensors");
    let report = convert::convert_vae(&npz, &out).unwrap();
    println!("vae: {} tensors, {} bytes, codebook {:?}", report.tensors, report.bytes, report.codebook);
    assert_eq!((report.tensors, report.codebook), (entries.len(), [128, 64]));
    let mut archive = NpzArchive::open(&npz).unwrap();
    let got = load_tensors(&out);
    for (name, _) in &entries {
        let name = name.trim_end_matches(".npy");
        let t = &got[name];
        assert_eq!(t.dtype(), DType::F32, "{name}");
        assert_eq!(t.dims(), archive.get(name).unwrap().shape.as_slice(), "{name}");
        assert_eq!(floats(t), archive.read_f32(name).unwrap(), "{name}");
    }

    let bad = dir.join("bad.npz");
    write_zip(&bad, CompressionMethod::Stored, &vae_entries(64, Some("decoder.6.weight")));
    let msg = convert::convert_vae(&bad, &dir.join("bad.safetensors")).unwrap_err().to_string();
    println!("bad vae: {msg}");
    assert!(msg.contains("decoder.") && !dir.join("bad.safetensors").exists(), "{msg}");
}

fn parse_npy(bytes: &[u8]) -> paligemma::Result<convert::NpyHeader> {
    convert::read_npy_header(&mut &bytes[..], "t")
}

fn replaced(from: &str, to: &str) -> Vec<u8> {
    let h = convert::write_npy_header(NpyDtype::F32, &[2]);
    let at = h.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
    [&h[..at], to.as_bytes(), &h[at + from.len()..]].concat()
}

#[test]
fn npy_headers_round_trip_in_every_version() {
    for (dtype, shape) in [(NpyDtype::F32, vec![2, 3]), (NpyDtype::BF16, vec![7]), (NpyDtype::F16, vec![])] {
        let bytes = convert::write_npy_header(dtype, &shape);
        assert_eq!(bytes.len() % 64, 0);
        let h = parse_npy(&bytes).unwrap();
        assert_eq!((h.dtype, h.shape, h.data_offset), (dtype, shape, bytes.len() as u64));
    }
    // v2/v3 use a 4-byte length; numpy ≥ 2 writes ml_dtypes bfloat16 as '<V2'; Python 2 wrote `3L`.
    for version in [2u8, 3] {
        let dict = b"{\"shape\": (3L, 4), 'fortran_order': False, 'descr': '<V2'}";
        let mut bytes = vec![0x93, b'N', b'U', b'M', b'P', b'Y', version, 0];
        bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        bytes.extend_from_slice(dict);
        let h = parse_npy(&bytes).unwrap();
        assert_eq!((h.dtype, h.shape, h.data_offset), (NpyDtype::BF16, vec![3, 4], 12 + dict.len() as u64));
    }
}

#[test]
fn bad_npy_headers_are_errors() {
    let cases: Vec<Vec<u8>> = vec![
        b"\x93NUMPY\x01".to_vec(),
        b"PK\x03\x04xxxxxxxx".to_vec(),
        b"\x93NUMPY\x09\x00\x00\x00".to_vec(),
        convert::write_npy_header(NpyDtype::F32, &[2, 2]).into_iter().take(20).collect(),
        replaced("False", "True "),
        replaced("<f4", ">f4"),
        replaced("<f4", "<i8"),
        replaced("(2,)", "(-2)"),
        replaced("'descr': '<f4'", "'descr': [('a', '<f4')]"),
        replaced("'shape'", "'shope'"),
        replaced("(2,)", "(99999999999, 99999999999, 9999)"),
    ];
    for case in cases {
        match parse_npy(&case) {
            Err(Error::Convert(msg)) => println!("rejected: {msg}"),
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(&case)),
        }
    }
}
