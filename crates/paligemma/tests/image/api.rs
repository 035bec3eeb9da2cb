//! The public API around decoding: raw pixels, tiny images, PNG encoding, EXIF, 16-bit input.

use paligemma::image::{decode, encode_png, preprocess, DecodeOptions, ImageInput, RgbImage};
use paligemma::Error;

use super::hostile::{encode, noise};
use super::invalid_image;

#[test]
fn raw_pixels() {
    let opts = DecodeOptions::default();
    let rgba = [10u8, 20, 30, 0, 40, 50, 60, 255];
    let rgb = decode(
        &ImageInput::Raw {
            data: &rgba,
            width: 2,
            height: 1,
            channels: 4,
        },
        &opts,
    )
    .unwrap();
    assert_eq!(
        rgb.data,
        vec![10, 20, 30, 40, 50, 60],
        "alpha is dropped, not composited"
    );
    let gray = decode(
        &ImageInput::Raw {
            data: &[7, 9],
            width: 1,
            height: 2,
            channels: 1,
        },
        &opts,
    )
    .unwrap();
    assert_eq!(gray.data, vec![7, 7, 7, 9, 9, 9]);
    let msg = invalid_image(decode(
        &ImageInput::Raw {
            data: &rgba,
            width: 2,
            height: 2,
            channels: 4,
        },
        &opts,
    ));
    assert!(msg.contains("8 bytes") && msg.contains("needs 16"), "{msg}");
    let msg = invalid_image(decode(
        &ImageInput::Raw {
            data: &rgba,
            width: 2,
            height: 2,
            channels: 2,
        },
        &opts,
    ));
    assert!(msg.contains("1, 3 or 4 channels"), "{msg}");
    invalid_image(decode(
        &ImageInput::Raw {
            data: &[],
            width: 1,
            height: 1,
            channels: 0,
        },
        &opts,
    ));
    let huge = ImageInput::Raw {
        data: &[],
        width: u32::MAX,
        height: u32::MAX,
        channels: 4,
    };
    invalid_image(decode(&huge, &opts));
}

#[test]
fn one_pixel_image_works() {
    let png = encode_png(&[200, 100, 50], 1, 1, 3).unwrap();
    let out = preprocess(&ImageInput::Encoded(&png), 224, &DecodeOptions::default()).unwrap();
    assert_eq!((out.width, out.height), (1, 1));
    assert_eq!(out.pixel_values.len(), 3 * 224 * 224);
    let expect = |v: f32| ((f64::from(v) / 255.0) as f32 - 0.5) / 0.5;
    assert!(out.pixel_values[..224 * 224]
        .iter()
        .all(|&x| x == expect(200.0)));
    assert!(out.pixel_values[2 * 224 * 224..]
        .iter()
        .all(|&x| x == expect(50.0)));
}

#[test]
fn encode_png_round_trips() {
    let opts = DecodeOptions::default();
    let rgba: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8 * 9).collect();
    let png = encode_png(&rgba, 3, 2, 4).unwrap();
    let back = decode(&ImageInput::Encoded(&png), &opts).unwrap();
    assert_eq!(
        back.data,
        rgba.chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        encode_png(&rgba, 3, 2, 5),
        Err(Error::InvalidArgument { .. })
    ));
    invalid_image(encode_png(&rgba, 3, 3, 4));
}

/// A JPEG with an APP1/EXIF segment carrying only an Orientation tag.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
    tiff.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_opt_in() {
    let jpeg = with_exif_orientation(&encode(&noise(40, 20), image::ImageFormat::Jpeg), 6);
    let plain = decode(&ImageInput::Encoded(&jpeg), &DecodeOptions::default()).unwrap();
    assert_eq!(
        (plain.width, plain.height),
        (40, 20),
        "EXIF must be ignored by default"
    );
    let opts = DecodeOptions {
        apply_exif_orientation: true,
        ..Default::default()
    };
    let rotated = decode(&ImageInput::Encoded(&jpeg), &opts).unwrap();
    assert_eq!((rotated.width, rotated.height), (20, 40));
    // Orientation 6 = rotate 90° clockwise: the first row of the result is the first column of
    // the stored image read bottom to top.
    let px = |img: &RgbImage, x: u32, y: u32| {
        let i = ((y * img.width + x) * 3) as usize;
        img.data[i..i + 3].to_vec()
    };
    assert_eq!(px(&rotated, 0, 0), px(&plain, 0, 19));
    assert_eq!(px(&rotated, 19, 0), px(&plain, 0, 0));
}

#[test]
fn sixteen_bit_pngs_keep_the_high_byte() {
    let opts = DecodeOptions::default();
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
        2,
        1,
        vec![0x12ab, 0xff00, 0x00ff, 0x8080, 0x7fff, 0x0100],
    )
    .unwrap();
    let png = encode(
        &image::DynamicImage::ImageRgb16(rgb16),
        image::ImageFormat::Png,
    );
    let got = decode(&ImageInput::Encoded(&png), &opts).unwrap();
    assert_eq!(
        got.data,
        vec![0x12, 0xff, 0x00, 0x80, 0x7f, 0x01],
        "Pillow's RGB;16B unpacking"
    );
    let gray16 =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![0xabcd, 0x00ff]).unwrap();
    let png = encode(
        &image::DynamicImage::ImageLuma16(gray16),
        image::ImageFormat::Png,
    );
    let got = decode(&ImageInput::Encoded(&png), &opts).unwrap();
    assert_eq!(got.data, vec![0xab, 0xab, 0xab, 0x00, 0x00, 0x00]);
}
