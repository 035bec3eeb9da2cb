//! PNG decoding row by row, straight into 8-bit RGB.
//!
//! The `image` crate decodes a whole PNG into its native layout first (up to 8 bytes a pixel for
//! 16-bit RGBA) and [`super::decode`] then converts that to RGB, so both buffers were alive at
//! once: a 100-megapixel 16-bit PNG took 1.27 GB. Here the `png` crate (the same decoder the
//! `image` crate drives) hands over one row at a time, 16-bit samples already cut to their high
//! byte (`STRIP_16`, what [`super::decode`] keeps for 16-bit images) and palettes and low bit
//! depths expanded (`EXPAND`, as the `image` crate asks), and only the RGB image is ever whole:
//! 3 bytes a pixel.
//!
//! Interlaced (Adam7) files deliver their rows in seven passes, so they take the `image` crate's
//! path instead (`None`).

use std::io::Cursor;

use png::{ColorType, Transformations};

use super::{check_pixel_limit, DecodeOptions, RgbImage};
use crate::error::{Error, Result};

/// Decodes a non-interlaced PNG to RGB, or returns `None` for an interlaced one.
pub(super) fn decode(bytes: &[u8], opts: &DecodeOptions, budget: u64) -> Result<Option<RgbImage>> {
    let limits = png::Limits { bytes: usize::try_from(budget).unwrap_or(usize::MAX) };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let header = decoder.read_header_info().map_err(corrupt)?;
    let (width, height, interlaced) = (header.width, header.height, header.interlaced);
    check_pixel_limit(width, height, opts.max_pixels)?;
    if interlaced {
        return Ok(None);
    }
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let channels = match reader.output_color_type().0 {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        // EXPAND turns palettes into RGB(A); anything else is a decoder we do not know.
        ColorType::Indexed => return Err(Error::InvalidImage("PNG palette was not expanded".into())),
    };
    let row_bytes = width as usize * 3;
    let mut data = Vec::new();
    data.try_reserve_exact(row_bytes * height as usize)
        .map_err(|_| Error::InvalidImage(format!("not enough memory for a {width}×{height} RGB image")))?;
    while let Some(row) = reader.next_row().map_err(corrupt)? {
        let row = row.data();
        match channels {
            3 => data.extend_from_slice(row),
            1 => data.extend(row.iter().flat_map(|&v| [v, v, v])),
            // Pillow's convert("RGB") drops alpha without compositing.
            2 => data.extend(row.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]])),
            _ => data.extend(row.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]])),
        }
    }
    if data.len() != row_bytes * height as usize {
        return Err(Error::InvalidImage(format!(
            "truncated PNG data: {} of {height} rows decoded",
            data.len() / row_bytes.max(1)
        )));
    }
    Ok(Some(RgbImage { width, height, data }))
}

fn corrupt(e: png::DecodingError) -> Error {
    Error::InvalidImage(match e {
        png::DecodingError::LimitsExceeded => "PNG image exceeds the decoding limits".into(),
        png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated PNG data: {e}")
        }
        other => format!("corrupt or truncated PNG data: {other}"),
    })
}
