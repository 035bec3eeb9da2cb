//! Image stage: encoded bytes, a file or raw pixels → 8-bit RGB → Pillow-exact bicubic resize to
//! the model's square resolution → normalised CHW `f32` in [−1, 1].
//!
//! This reproduces the Hugging Face `SiglipImageProcessor` PIL path (spec §3.1): convert to RGB,
//! squash to `S×S` with `Image.BICUBIC` (no aspect preservation, no crop), `x/255`, then
//! `(x − 0.5)/0.5`. EXIF orientation is ignored by default because that reference ignores it.

mod decode;
mod png_rows;
mod resize;

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

pub use resize::resize_bicubic_u8;

/// Where the pixels come from.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// An encoded file in memory: JPEG, PNG, WebP, GIF (first frame) or BMP, recognised by
    /// content, not by name.
    Encoded(&'a [u8]),
    /// A file on disk, read and then decoded like [`ImageInput::Encoded`].
    Path(&'a Path),
    /// Interleaved 8-bit pixels, rows top to bottom: 1 (grey), 3 (RGB) or 4 (RGBA) channels.
    Raw {
        data: &'a [u8],
        width: u32,
        height: u32,
        channels: u8,
    },
}

/// Decoding limits and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest accepted `width × height`, checked against the header before decoding.
    pub max_pixels: u64,
    /// Rotate/flip according to the EXIF orientation tag. Off by default to match the
    /// reference processor, which ignores EXIF.
    pub apply_exif_orientation: bool,
}

/// The default pixel limit: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: false,
        }
    }
}

/// An 8-bit RGB image, interleaved, rows top to bottom (`data.len() == width · height · 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// What the vision tower consumes, plus the original size (needed to map boxes and masks back
/// onto the caller's image).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `[3, size, size]` row-major, RGB planes, values in [−1, 1].
    pub pixel_values: Vec<f32>,
    /// Width of the decoded image before resizing (after EXIF rotation, if applied).
    pub width: u32,
    /// Height of the decoded image before resizing.
    pub height: u32,
}

/// Decodes any [`ImageInput`] to 8-bit RGB the way Pillow's `convert("RGB")` does: grey is
/// replicated, alpha is dropped without compositing, palettes are expanded.
pub fn decode(input: &ImageInput, opts: &DecodeOptions) -> Result<RgbImage> {
    if opts.max_pixels == 0 {
        return Err(Error::invalid("max_pixels", "must be at least 1"));
    }
    match *input {
        ImageInput::Encoded(bytes) => decode::decode_guarded(bytes, opts),
        ImageInput::Path(path) => decode::decode_guarded(&read_file(path, opts)?, opts),
        ImageInput::Raw {
            data,
            width,
            height,
            channels,
        } => raw_to_rgb(data, width, height, channels, opts),
    }
}

/// Resizes with Pillow's bicubic filter (bit-exact with `Image.resize((w, h), Image.BICUBIC)`).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let data = resize_bicubic_u8(&img.data, img.width, img.height, 3, width, height)?;
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// `(x/255 − 0.5)/0.5` into planar CHW `f32`, in the float32 operation order transformers uses
/// (`rescale` multiplies by `1/255` in `f64` and stores `f32`; `normalize` then works in `f32`),
/// so exact pixels give bit-identical values.
pub fn normalize_chw(img: &RgbImage) -> Vec<f32> {
    let lut: [f32; 256] = std::array::from_fn(|v| normalize_value(v as u8));
    let plane = img.data.len() / 3;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = lut[usize::from(v)];
        }
    }
    out
}

fn normalize_value(v: u8) -> f32 {
    let rescaled = (f64::from(v) * (1.0 / 255.0)) as f32;
    (rescaled - 0.5f32) / 0.5f32
}

/// Decode, resize to `size × size`, normalise.
pub fn preprocess(input: &ImageInput, size: u32, opts: &DecodeOptions) -> Result<Preprocessed> {
    if size == 0 {
        return Err(Error::invalid("size", "image resolution must be positive"));
    }
    let rgb = decode(input, opts)?;
    let resized = resize_bicubic(&rgb, size, size)?;
    Ok(Preprocessed {
        pixel_values: normalize_chw(&resized),
        width: rgb.width,
        height: rgb.height,
    })
}

/// Encodes 8-bit pixels (1 = grey, 2 = grey+alpha, 3 = RGB, 4 = RGBA channels) as PNG.
pub fn encode_png(data: &[u8], width: u32, height: u32, channels: u8) -> Result<Vec<u8>> {
    use image::{ExtendedColorType, ImageEncoder};
    let color = match channels {
        1 => ExtendedColorType::L8,
        2 => ExtendedColorType::La8,
        3 => ExtendedColorType::Rgb8,
        4 => ExtendedColorType::Rgba8,
        n => {
            return Err(Error::invalid(
                "channels",
                format!("expected 1, 2, 3 or 4, got {n}"),
            ))
        }
    };
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            "width/height",
            format!("cannot encode a {width}×{height} image"),
        ));
    }
    check_raw_len(data.len(), width, height, channels)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, width, height, color)
        .map_err(|e| Error::Internal(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

/// Refuses images whose declared size is zero or above `max_pixels`.
pub(crate) fn check_pixel_limit(width: u32, height: u32, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidImage(format!(
            "zero-sized image ({width}×{height})"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::InvalidImage(format!(
            "declared size {width}×{height} ({} megapixels) exceeds the limit of {} megapixels",
            megapixels(pixels),
            megapixels(max_pixels)
        )));
    }
    Ok(())
}

fn megapixels(pixels: u64) -> String {
    if pixels.is_multiple_of(1_000_000) {
        (pixels / 1_000_000).to_string()
    } else {
        format!("{:.2}", pixels as f64 / 1e6)
    }
}

fn check_raw_len(len: usize, width: u32, height: u32, channels: u8) -> Result<()> {
    // u128: width · height · channels can exceed u64 when the caller raised `max_pixels`.
    let expected = u128::from(width) * u128::from(height) * u128::from(channels);
    if len as u128 != expected {
        return Err(Error::InvalidImage(format!(
            "raw pixel buffer holds {len} bytes, but {width}×{height}×{channels} needs {expected}"
        )));
    }
    Ok(())
}

fn raw_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    channels: u8,
    opts: &DecodeOptions,
) -> Result<RgbImage> {
    if !matches!(channels, 1 | 3 | 4) {
        return Err(Error::InvalidImage(format!(
            "raw pixels must have 1, 3 or 4 channels, got {channels}"
        )));
    }
    check_pixel_limit(width, height, opts.max_pixels)?;
    check_raw_len(data.len(), width, height, channels)?;
    let data = match channels {
        1 => data.iter().flat_map(|&v| [v, v, v]).collect(),
        3 => data.to_vec(),
        _ => data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Reads a file, refusing ones too large to hold any image within the limits, so a huge path
/// cannot exhaust memory before the decoder's checks run.
fn read_file(path: &Path, opts: &DecodeOptions) -> Result<Vec<u8>> {
    let cant =
        |e: std::io::Error| Error::InvalidImage(format!("cannot read {}: {e}", path.display()));
    // A FIFO or device would block the thread (the model's worker) or never end.
    let file = crate::files::open_regular(path).map_err(cant)?;
    let budget = decode::alloc_budget(opts.max_pixels);
    let mut bytes = Vec::new();
    file.take(budget.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cant)?;
    if bytes.len() as u64 > budget {
        return Err(Error::InvalidImage(format!(
            "{} is larger than {budget} bytes, more than any image within the pixel limit",
            path.display()
        )));
    }
    Ok(bytes)
}
