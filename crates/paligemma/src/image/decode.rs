//! Encoded bytes → 8-bit RGB, matching what Pillow's `Image.open(..).convert("RGB")` returns.
//!
//! Inputs are untrusted (they arrive from JavaScript callers), so the declared size is checked
//! against the pixel limit from the header alone, before any pixel buffer exists, and the
//! `image` crate's own allocation limit bounds what a decoder may allocate internally.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::{check_pixel_limit, DecodeOptions, RgbImage};
use crate::error::{Error, Result};

/// The most memory one decode may claim: the largest legitimate decoded buffer (16-bit RGBA,
/// 8 bytes a pixel) at the pixel limit, plus slack for decoder-internal tables.
pub(super) fn alloc_budget(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(64 << 20)
}

/// [`decode_encoded`], with any panic inside a third-party codec turned into an error: the bytes
/// are untrusted and a panic must not cross into the Node addon.
pub(super) fn decode_guarded(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage> {
    std::panic::catch_unwind(AssertUnwindSafe(|| decode_encoded(bytes, opts))).unwrap_or_else(
        |_| {
            Err(Error::InvalidImage(
                "the image decoder failed on malformed data".into(),
            ))
        },
    )
}

fn decode_encoded(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("empty input (0 bytes)".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::InvalidImage(format!("cannot read image data: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Error::InvalidImage(format!(
            "unrecognised image format (first bytes {}); supported: JPEG, PNG, WebP, GIF, BMP",
            hex_prefix(bytes)
        )));
    };
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
    ) {
        return Err(Error::InvalidImage(format!(
            "unsupported image format {format:?}; supported: JPEG, PNG, WebP, GIF, BMP"
        )));
    }
    if format == ImageFormat::Jpeg && jpeg_lacks_end_marker(bytes) {
        // zune-jpeg (the `image` crate's JPEG backend) is lenient and grey-fills missing scan
        // data; Pillow refuses such files ("image file is truncated"), and so do we.
        return Err(Error::InvalidImage(
            "truncated JPEG: the end-of-image marker is missing".into(),
        ));
    }

    let budget = alloc_budget(opts.max_pixels);
    if format == ImageFormat::Png && !opts.apply_exif_orientation {
        if let Some(rgb) = super::png_rows::decode(bytes, opts, budget)? {
            return Ok(rgb);
        }
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(budget);
    let mut reader = reader;
    reader.limits(limits);
    // Only headers are parsed here; no pixel buffer is allocated yet.
    let mut decoder = reader.into_decoder().map_err(|e| map_err(format, e))?;
    let (width, height) = decoder.dimensions();
    check_pixel_limit(width, height, opts.max_pixels)?;
    let total = decoder.total_bytes();
    if total > budget {
        return Err(Error::InvalidImage(format!(
            "decoding needs {total} bytes, more than the {budget}-byte allowance"
        )));
    }
    let orientation = if opts.apply_exif_orientation {
        // A broken EXIF block should not make an otherwise readable image unusable.
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_err(format, e))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(to_rgb(img))
}

/// Pillow's `convert("RGB")`: grey is replicated and alpha is discarded, not composited.
///
/// 16-bit samples keep their high byte. That is what Pillow does for 16-bit colour PNGs
/// (raw mode `RGB;16B`); for 16-bit greyscale Pillow instead clips `I;16` values to 255, which
/// turns nearly every such image white, so we deliberately diverge there.
fn to_rgb(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        DynamicImage::ImageRgba8(buf) => rgba_to_rgb_in_place(buf.into_raw()),
        DynamicImage::ImageLuma8(buf) => buf.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        DynamicImage::ImageRgb16(buf) => buf.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        DynamicImage::ImageLuma16(buf) => buf
            .as_raw()
            .iter()
            .flat_map(|&v| [(v >> 8) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [(p[0] >> 8) as u8; 3])
            .collect(),
        // Float images (not produced by the enabled codecs): the crate's own clamped rounding.
        other => other.to_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

/// Drops every fourth byte in place, so an RGBA image costs 4 bytes a pixel to convert rather
/// than 4 + 3.
fn rgba_to_rgb_in_place(mut data: Vec<u8>) -> Vec<u8> {
    let pixels = data.len() / 4;
    for i in 0..pixels {
        // Reads at 4i.. and writes at 3i.., never ahead of what is still to be read.
        data.copy_within(4 * i..4 * i + 3, 3 * i);
    }
    data.truncate(3 * pixels);
    data.shrink_to_fit();
    data
}

fn map_err(format: ImageFormat, e: ImageError) -> Error {
    let name = format!("{format:?}").to_uppercase();
    Error::InvalidImage(match e {
        ImageError::Decoding(e) => format!("corrupt or truncated {name} data: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name} data: {e}")
        }
        ImageError::IoError(e) => format!("cannot read {name} data: {e}"),
        ImageError::Limits(e) => format!("{name} image exceeds the decoding limits: {e}"),
        ImageError::Unsupported(e) => format!("unsupported {name} variant: {e}"),
        other => format!("cannot decode {name} data: {other}"),
    })
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when a JPEG's segment structure can be followed to its first scan and no end-of-image
/// marker (`FF D9`) follows it. Entropy-coded data escapes `FF` as `FF 00`, so `FF D9` after the
/// scan header can only be the real marker. Files whose structure cannot be followed (cut inside
/// the headers, corrupt lengths) are left to the decoder, which reports its own error.
fn jpeg_lacks_end_marker(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let (Some(&0xFF), Some(&marker)) = (b.get(i), b.get(i + 1)) else {
            return false;
        };
        match marker {
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => i += 2, // markers without a length field
            _ => {
                let (Some(&hi), Some(&lo)) = (b.get(i + 2), b.get(i + 3)) else {
                    return false;
                };
                let seg_end = i + 2 + usize::from(u16::from_be_bytes([hi, lo]));
                if marker == 0xDA {
                    let scan = b.get(seg_end..).unwrap_or(&[]);
                    return !scan.windows(2).any(|w| w == [0xFF, 0xD9]);
                }
                i = seg_end;
            }
        }
    }
}
