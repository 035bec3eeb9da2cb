//! Hostile and malformed inputs: every one must end in `Error::InvalidImage`, never a panic or
//! an allocation sized by an attacker.

use std::io::Cursor;

use paligemma::image::{decode, preprocess, DecodeOptions, ImageInput};
use paligemma::{Error, ErrorCode};

use super::{invalid_image, read};

pub(crate) fn noise(w: u32, h: u32) -> image::DynamicImage {
    let mut s = 12345u32;
    let buf = image::RgbImage::from_fn(w, h, |_, _| {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let b = s.to_le_bytes();
        image::Rgb([b[1], b[2], b[3]])
    });
    image::DynamicImage::ImageRgb8(buf)
}

pub(crate) fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG whose valid IHDR declares `w × h` RGB pixels, followed by a tiny IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let png = png_header_only(100_000, 100_000);
    let msg = invalid_image(decode(
        &ImageInput::Encoded(&png),
        &DecodeOptions::default(),
    ));
    assert!(
        msg.contains("100000×100000")
            && msg.contains("10000 megapixels")
            && msg.contains("limit of 100 megapixels"),
        "{msg}"
    );
}

#[test]
fn max_pixels_is_configurable() {
    let bytes = read("chelsea.png"); // 451×300 = 135 300 pixels
    let tight = DecodeOptions {
        max_pixels: 135_299,
        ..Default::default()
    };
    let msg = invalid_image(decode(&ImageInput::Encoded(&bytes), &tight));
    assert!(
        msg.contains("451×300") && msg.contains("0.14 megapixels"),
        "{msg}"
    );
    let exact = DecodeOptions {
        max_pixels: 135_300,
        ..Default::default()
    };
    assert!(decode(&ImageInput::Encoded(&bytes), &exact).is_ok());
    let raw = vec![0u8; 12];
    let msg = invalid_image(decode(
        &ImageInput::Raw {
            data: &raw,
            width: 2,
            height: 2,
            channels: 3,
        },
        &DecodeOptions {
            max_pixels: 3,
            ..Default::default()
        },
    ));
    assert!(msg.contains("exceeds the limit"), "{msg}");
    let zero = DecodeOptions {
        max_pixels: 0,
        ..Default::default()
    };
    assert!(matches!(
        decode(&ImageInput::Encoded(&bytes), &zero),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn truncated_files_are_refused() {
    let img = noise(64, 48);
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
    ] {
        let full = encode(&img, format);
        let ok = decode(&ImageInput::Encoded(&full), &DecodeOptions::default()).unwrap();
        assert_eq!((ok.width, ok.height), (64, 48), "{format:?}");
        for cut in [
            full.len() / 2,
            full.len() * 9 / 10,
            30.min(full.len() - 1),
            8,
        ] {
            let msg = invalid_image(decode(
                &ImageInput::Encoded(&full[..cut]),
                &DecodeOptions::default(),
            ));
            println!("{format:?} cut at {cut}/{}: {msg}", full.len());
        }
    }
}

#[test]
fn corrupt_and_unsupported_inputs_are_refused() {
    let opts = DecodeOptions::default();
    let msg = invalid_image(decode(&ImageInput::Encoded(b"hello"), &opts));
    assert!(msg.contains("unrecognised image format"), "{msg}");
    invalid_image(decode(&ImageInput::Encoded(b""), &opts));
    // TIFF is recognised by its magic but not enabled.
    let msg = invalid_image(decode(
        &ImageInput::Encoded(b"II*\0\x08\0\0\0\0\0\0\0\0\0"),
        &opts,
    ));
    assert!(msg.contains("unsupported"), "{msg}");

    let mut png = encode(&noise(16, 16), image::ImageFormat::Png);
    png[16..24].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]); // IHDR, CRC now wrong
    println!(
        "corrupt PNG header: {}",
        invalid_image(decode(&ImageInput::Encoded(&png), &opts))
    );
    let mut jpeg = encode(&noise(16, 16), image::ImageFormat::Jpeg);
    for b in &mut jpeg[4..40] {
        *b = 0x5a;
    }
    println!(
        "corrupt JPEG header: {}",
        invalid_image(decode(&ImageInput::Encoded(&jpeg), &opts))
    );
    let mut bmp = encode(&noise(16, 16), image::ImageFormat::Bmp);
    bmp[14..18].copy_from_slice(&[0xff; 4]); // DIB header size
    println!(
        "corrupt BMP header: {}",
        invalid_image(decode(&ImageInput::Encoded(&bmp), &opts))
    );
}

#[test]
fn zero_sized_images_are_refused() {
    let opts = DecodeOptions::default();
    for (w, h) in [(0, 10), (10, 0)] {
        let msg = invalid_image(decode(&ImageInput::Encoded(&png_header_only(w, h)), &opts));
        println!("PNG {w}×{h}: {msg}");
        let msg = invalid_image(decode(
            &ImageInput::Raw {
                data: &[],
                width: w,
                height: h,
                channels: 3,
            },
            &opts,
        ));
        assert!(msg.contains("zero-sized"), "{msg}");
    }
}

/// Overwrites the declared size in the header of a small valid file of each format.
#[test]
fn oversized_headers_are_refused_in_every_format() {
    let img = noise(16, 16);
    let opts = DecodeOptions::default();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let mut gif = encode(&img, image::ImageFormat::Gif);
    gif[6..10].copy_from_slice(&[0xff; 4]); // logical screen 65535×65535
    cases.push(("GIF", gif));

    let mut bmp = encode(&img, image::ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&20_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&20_000i32.to_le_bytes());
    cases.push(("BMP", bmp));

    let mut jpeg = encode(&img, image::ImageFormat::Jpeg);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xff; 4]); // 65535×65535
    cases.push(("JPEG", jpeg));

    let mut webp = encode(&img, image::ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L");
    // 14-bit width−1 and height−1 (LSB first) after the 0x2f signature: 16383×16383.
    // (All-ones would read as 16384, which image-webp wraps to 0.)
    webp[21..24].copy_from_slice(&[0xfe, 0xbf, 0xff]);
    webp[24] |= 0x0f;
    cases.push(("WebP", webp));

    for (name, bytes) in cases {
        let msg = invalid_image(decode(&ImageInput::Encoded(&bytes), &opts));
        assert!(
            msg.contains("exceeds the limit of 100 megapixels"),
            "{name}: {msg}"
        );
    }
}

/// Random byte corruption of small valid files must give errors or images, never a panic.
#[test]
fn mutated_files_never_panic() {
    let img = noise(24, 16);
    let opts = DecodeOptions {
        max_pixels: 1 << 20,
        ..Default::default()
    };
    let mut s = 0x9e37_79b9u32;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    let (mut ok, mut err) = (0, 0);
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
    ] {
        let base = encode(&img, format);
        for _ in 0..300 {
            let mut bytes = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % bytes.len();
                bytes[i] = next() as u8;
            }
            if next() % 4 == 0 {
                bytes.truncate(next() as usize % bytes.len());
            }
            match preprocess(&ImageInput::Encoded(&bytes), 32, &opts) {
                Ok(p) => {
                    assert_eq!(p.pixel_values.len(), 3 * 32 * 32);
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::InvalidImage, "{e}");
                    err += 1;
                }
            }
        }
    }
    println!("mutations: {ok} decoded, {err} refused");
}
