//! Mask decoder parity with the PyTorch fixture (scripts/make_vae_fixture.py) and the geometry of
//! mask pasting.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use paligemma::segmentation::{
    mask_to_u8, paste_mask, paste_mask_bilinear, paste_mask_with, resize_bilinear, MaskDecoder, MASK_PIXELS, SEG_TOKENS,
};
use paligemma::Error;

/// `testdata/vae`, or `PALIGEMMA_VAE_DIR` (a fixture from `make_vae_fixture.py --full-width DIR`).
fn vae_dir() -> PathBuf {
    std::env::var_os("PALIGEMMA_VAE_DIR").map(PathBuf::from).unwrap_or_else(|| common::testdata().join("vae"))
}

/// The decoder, each object's 16 segmentation ids, each object's expected mask, every tensor.
type Fixture = (MaskDecoder, Vec<[u32; SEG_TOKENS]>, Vec<[f32; MASK_PIXELS]>, HashMap<String, Tensor>);

fn fixture() -> Fixture {
    let decoder =
        MaskDecoder::load(&vae_dir().join("vae-tiny.safetensors"), &Device::Cpu).expect("fixture decoder loads");
    let expected = common::load_tensors(&vae_dir().join("expected.safetensors"));
    let ids = common::ids(&expected["indices"]);
    let objects: Vec<[u32; SEG_TOKENS]> = ids.chunks_exact(SEG_TOKENS).map(|c| c.try_into().unwrap()).collect();
    let masks: Vec<[f32; MASK_PIXELS]> =
        common::floats(&expected["masks"]).chunks_exact(MASK_PIXELS).map(|c| c.try_into().unwrap()).collect();
    assert_eq!(objects.len(), masks.len());
    assert!(objects.len() >= 2, "the fixture should batch several objects");
    (decoder, objects, masks, expected)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn decoder_matches_pytorch() {
    let (decoder, objects, expected, _) = fixture();
    assert_eq!(decoder.codebook_size(), 128);
    println!("codebook 128 × {}", decoder.embed_dim());

    let got = decoder.decode(&objects).unwrap();
    assert_eq!(got.len(), objects.len());
    let mut worst = 0.0f32;
    for (o, (g, e)) in got.iter().zip(&expected).enumerate() {
        let d = max_diff(g, e);
        println!("object {o}: max |Δ| = {d:.3e}");
        worst = worst.max(d);
    }
    println!("mask decoder vs PyTorch (float64 reference): max |Δ| = {worst:.3e}");
    assert!(worst <= 1e-4, "max |Δ| {worst} > 1e-4");

    // Batching must not change any object's mask.
    for (o, object) in objects.iter().enumerate() {
        let single = decoder.decode(std::slice::from_ref(object)).unwrap();
        assert!(max_diff(&single[0], &got[o]) <= 1e-5, "object {o} decoded alone differs from the batch");
    }
    let flat: Vec<u32> = objects.iter().flatten().copied().collect();
    assert_eq!(decoder.decode_flat(&flat).unwrap(), got);
    let tensor = decoder.decode_tensor(&objects).unwrap();
    assert_eq!(tensor.dims(), &[objects.len(), 64, 64]);
    assert!(decoder.decode(&[]).unwrap().is_empty());
}

#[test]
fn paste_matches_pil() {
    let (_, _, masks, expected) = fixture();
    let boxes = expected.get("boxes").expect("expected.safetensors lacks the paste fixture (regenerate with pillow)");
    let boxes = boxes.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    type Paste = fn(&[f32; MASK_PIXELS], (i64, i64, i64, i64), u32, u32) -> Vec<u8>;
    for (filter, paste) in [("bilinear", paste_mask_bilinear as Paste), ("bicubic", paste_mask as Paste)] {
        let pasted = &expected[&format!("pasted_{filter}")];
        let (n, h, w) = pasted.dims3().unwrap();
        assert_eq!(n, masks.len());
        let pasted = pasted.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        for (o, (mask, b)) in masks.iter().zip(&boxes).enumerate() {
            let resized = &expected[&format!("resized_{filter}_{o}")];
            let (bh, bw) = resized.dims2().unwrap();
            let resized = resized.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            if filter == "bilinear" {
                assert_eq!(resize_bilinear(&mask_to_u8(mask), 64, 64, bw, bh), resized, "bilinear resize {o}");
            }
            let got = paste(mask, (b[0], b[1], b[2], b[3]), w as u32, h as u32);
            let want = &pasted[o * w * h..(o + 1) * w * h];
            let wrong = got.iter().zip(want).filter(|(a, b)| a != b).count();
            println!("{filter} paste {o} box {b:?}: {wrong} of {} pixels differ from PIL", w * h);
            assert_eq!(wrong, 0, "{filter} paste {o} differs from PIL");
        }
    }
}

/// Rewrites the committed fixture (whose widths the expectations below assume) with one tensor
/// replaced and returns the new file's path.
fn patched_weights(tag: &str, name: &str, replacement: Option<Tensor>) -> PathBuf {
    let mut tensors = common::load_tensors(&common::testdata().join("vae/vae-tiny.safetensors"));
    match replacement {
        Some(t) => tensors.insert(name.to_string(), t),
        None => tensors.remove(name),
    };
    let dir = std::env::temp_dir().join(format!("paligemma-seg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn wrong_shapes_name_the_tensor() {
    let zeros = |shape: &[usize]| Some(Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap());

    let path = patched_weights("res-kernel", "decoder.2.net.2.weight", zeros(&[64, 64, 1, 1]));
    match MaskDecoder::load(&path, &Device::Cpu) {
        Err(Error::TensorShape { name, expected, found }) => {
            assert_eq!(name, "decoder.2.net.2.weight");
            assert_eq!(expected, vec![64, 64, 3, 3]);
            assert_eq!(found, vec![64, 64, 1, 1]);
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }

    // An upsampling layer whose input width does not follow from the previous layer.
    let path = patched_weights("up-width", "decoder.6.weight", zeros(&[30, 16, 4, 4]));
    let err = MaskDecoder::load(&path, &Device::Cpu).err().expect("mismatched widths must fail");
    assert!(err.to_string().contains("decoder.6.weight"), "{err}");

    let path = patched_weights("codebook-rank", "_vq_vae._embedding", zeros(&[128, 64, 1]));
    let err = MaskDecoder::load(&path, &Device::Cpu).err().expect("a 3-D codebook must fail");
    assert!(err.to_string().contains("_vq_vae._embedding"), "{err}");

    let path = patched_weights("no-final", "decoder.12.bias", None);
    match MaskDecoder::load(&path, &Device::Cpu) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "decoder.12.bias"),
        other => panic!("expected a missing-tensor error, got {:?}", other.err()),
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn out_of_range_indices_are_rejected() {
    let (decoder, objects, _, _) = fixture();
    let mut bad = objects.clone();
    bad[1][7] = 128;
    match decoder.decode(&bad) {
        Err(e @ Error::InvalidArgument { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("128") && msg.contains("object 1") && msg.contains("position 7"), "{msg}");
        }
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
    assert!(decoder.decode(&[[u32::MAX; SEG_TOKENS]]).is_err());
    assert!(matches!(decoder.decode_flat(&[0; 15]), Err(Error::InvalidArgument { .. })));
}

/// A mask that is foreground (value 1) where `inside(row, col)` holds, background (−1) elsewhere.
fn synthetic(inside: impl Fn(usize, usize) -> bool) -> [f32; MASK_PIXELS] {
    let mut m = [-1.0f32; MASK_PIXELS];
    for (i, v) in m.iter_mut().enumerate() {
        if inside(i / 64, i % 64) {
            *v = 1.0;
        }
    }
    m
}

fn set_pixels(mask: &[u8], w: u32) -> Vec<(usize, usize)> {
    let w = w as usize;
    mask.iter().enumerate().filter(|(_, &v)| v != 0).map(|(i, _)| (i % w, i / w)).collect()
}

fn rect(x1: usize, y1: usize, x2: usize, y2: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (y1..y2).flat_map(|y| (x1..x2).map(move |x| (x, y))).collect();
    v.sort_by_key(|&(x, y)| (y, x));
    v
}

#[test]
fn paste_geometry() {
    type Paste = fn(&[f32; MASK_PIXELS], (i64, i64, i64, i64), u32, u32) -> Vec<u8>;
    for paste in [paste_mask as Paste, paste_mask_bilinear] {
        let full = synthetic(|_, _| true);
        let (w, h) = (10, 12);

        let m = paste(&full, (2, 3, 6, 8), w, h);
        assert_eq!(m.len(), (w * h) as usize);
        assert!(m.iter().all(|&v| v == 0 || v == 255));
        assert_eq!(set_pixels(&m, w), rect(2, 3, 6, 8));

        // Boxes running over the borders are cut, not shifted.
        assert_eq!(set_pixels(&paste(&full, (-5, -2, 4, 3), w, h), w), rect(0, 0, 4, 3));
        assert_eq!(set_pixels(&paste(&full, (7, 9, 20, 30), w, h), w), rect(7, 9, 10, 12));

        // The mask is stretched over the box: the left half of the mask covers the left half of the box.
        let left = synthetic(|_, col| col < 32);
        let m = paste(&left, (0, 0, 128, 4), 200, 10);
        assert_eq!(set_pixels(&m, 200), rect(0, 0, 64, 4));
        // ... and a cut box keeps the mask where it would have been.
        let m = paste(&left, (-32, 0, 96, 4), 200, 10);
        assert_eq!(set_pixels(&m, 200), rect(0, 0, 32, 4));
        let top = synthetic(|row, _| row < 32);
        let m = paste(&top, (0, -10, 5, 30), 5, 10);
        assert_eq!(set_pixels(&m, 5), rect(0, 0, 5, 10));
        let m = paste(&top, (0, -20, 5, 20), 5, 10);
        assert!(set_pixels(&m, 5).is_empty());

        // Empty, inverted, outside or absurd boxes give an all-zero mask of the image's size.
        for b in [
            (3, 3, 3, 8),
            (6, 3, 2, 8),
            (2, 8, 6, 3),
            (10, 0, 15, 5),
            (-9, -9, 0, 0),
            (0, 0, i64::MAX, 5),
            (i64::MIN, 0, 5, 5),
        ] {
            let m = paste(&full, b, w, h);
            assert_eq!(m.len(), (w * h) as usize, "box {b:?}");
            assert!(m.iter().all(|&v| v == 0), "box {b:?} should paste nothing");
        }
        assert!(paste(&full, (0, 0, 5, 5), 0, 10).is_empty());
        assert_eq!(paste(&full, (0, 0, 5, 5), u32::MAX, 0).len(), 0);

        // Non-finite decoder output never panics; NaN counts as background.
        let mut odd = [f32::NAN; MASK_PIXELS];
        odd[0] = f32::INFINITY;
        assert_eq!(paste(&odd, (0, 0, 4, 4), 4, 4).len(), 16);
    }

    let full = synthetic(|_, _| true);
    // A caller-provided resize is used as is; a short result counts as background.
    let m = paste_mask_with(&full, (1, 1, 4, 4), 5, 5, |src, sw, sh, dw, dh| {
        assert_eq!((src.len(), sw, sh, dw, dh), (MASK_PIXELS, 64, 64, 3, 3));
        vec![255; 4]
    });
    assert_eq!(set_pixels(&m, 5), vec![(1, 1), (2, 1), (3, 1), (1, 2)]);
}
