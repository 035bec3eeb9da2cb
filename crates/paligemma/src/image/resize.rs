//! Bicubic resampling that reproduces Pillow's `Image.resize(size, Image.BICUBIC)` on 8-bit
//! images bit for bit (`src/libImaging/Resample.c`: `precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResample{Horizontal,Vertical}_8bpc`, `ImagingResampleInner`).
//!
//! The checkpoints were trained and evaluated on pixels produced by that code, so every detail
//! that can move a value by one level is kept: the coefficients are computed in `f64` in Pillow's
//! operation order, quantised to 22-bit fixed point with Pillow's rounding, accumulated from a
//! half-unit bias, and the horizontal pass is stored as clamped `u8` before the vertical pass.

use crate::error::{Error, Result};

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 bits minus 8 for the value minus 2 for the
/// overshoot of negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Keys' cubic convolution kernel with a = −0.5, written in Pillow's exact operation order.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Support of the bicubic kernel before it is stretched for downscaling.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Fixed-point filter taps for one axis: output sample `i` reads `len[i]` inputs starting at
/// `start[i]`, weighted by `taps[i * ksize ..]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    taps: Vec<i32>,
}

/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the default box (the whole
/// axis). Sizes must be non-zero; the callers check.
fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow passes the box edges as C `float`, so the span goes through f32 first.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `(int)` in C truncates toward zero, as does `as i64`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0f64;
        for (x, w) in weights.iter_mut().enumerate().take(n) {
            *w = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            ww += *w;
        }
        let row = &mut taps[xx * ksize..(xx + 1) * ksize];
        for (tap, &w) in row.iter_mut().zip(&weights[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *tap = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        start.push(xmin as usize);
        len.push(n);
    }
    Coeffs {
        ksize,
        start,
        len,
        taps,
    }
}

/// Pillow's `clip8`: drop the fixed-point fraction (arithmetic shift, i.e. floor) and clamp.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding bias every accumulator starts from.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `row0 .. row0 + rows` of `src` (`in_w` wide).
fn resample_horizontal(
    src: &[u8],
    in_w: usize,
    channels: usize,
    row0: usize,
    rows: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let out_w = c.start.len();
    let mut out = vec![0u8; out_w * rows * channels];
    let mut acc = vec![0i64; channels];
    for (y, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
        let in_row = &src[(row0 + y) * in_w * channels..(row0 + y + 1) * in_w * channels];
        for (xx, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
            let k = &c.taps[xx * c.ksize..xx * c.ksize + c.len[xx]];
            let first = c.start[xx] * channels;
            let window = &in_row[first..first + c.len[xx] * channels];
            acc.fill(HALF);
            for (px, &w) in window.chunks_exact(channels).zip(k) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += i64::from(v) * i64::from(w);
                }
            }
            for (o, &a) in out_px.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
    }
    out
}

/// Vertical pass; `c.start` is relative to the first row of `src`.
fn resample_vertical(src: &[u8], width: usize, channels: usize, c: &Coeffs) -> Vec<u8> {
    let stride = width * channels;
    let out_h = c.start.len();
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i64; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let k = &c.taps[yy * c.ksize..yy * c.ksize + c.len[yy]];
        acc.fill(HALF);
        for (dy, &w) in k.iter().enumerate() {
            let y = c.start[yy] + dy;
            let in_row = &src[y * stride..(y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(in_row) {
                *a += i64::from(v) * i64::from(w);
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resizes an interleaved 8-bit image (`channels` samples per pixel, rows top to bottom) to
/// `out_width × out_height` exactly as Pillow's bicubic `resize` does for modes `L` and `RGB`.
///
/// Aspect ratio is not preserved. Any channel count works because Pillow filters every band
/// independently with the same taps. Fails on zero sizes, zero channels or a buffer whose
/// length is not `width · height · channels`.
pub fn resize_bicubic_u8(
    data: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    out_width: u32,
    out_height: u32,
) -> Result<Vec<u8>> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidImage(format!(
            "cannot resize a zero-sized image ({width}×{height})"
        )));
    }
    if out_width == 0 || out_height == 0 {
        return Err(Error::invalid(
            "size",
            format!("resize target must be non-zero, got {out_width}×{out_height}"),
        ));
    }
    if channels == 0 {
        return Err(Error::invalid("channels", "must be at least 1"));
    }
    let (in_w, in_h) = (width as usize, height as usize);
    let (out_w, out_h) = (out_width as usize, out_height as usize);
    let expected = in_w.checked_mul(in_h).and_then(|p| p.checked_mul(channels));
    if expected != Some(data.len()) {
        return Err(Error::InvalidImage(format!(
            "pixel buffer holds {} bytes, expected {width}×{height}×{channels}",
            data.len()
        )));
    }

    if out_w
        .checked_mul(out_h)
        .and_then(|p| p.checked_mul(channels))
        .is_none()
    {
        return Err(Error::invalid(
            "size",
            format!("resize target {out_width}×{out_height} is too large"),
        ));
    }

    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    if !need_horizontal && !need_vertical {
        return Ok(data.to_vec());
    }
    let vert = precompute(in_h, out_h);
    if !need_horizontal {
        return Ok(resample_vertical(data, in_w, channels, &vert));
    }

    // Like Pillow, the horizontal pass only produces the rows the vertical pass will read, and
    // the vertical taps are rebased onto that strip.
    let row_first = vert.start.first().copied().unwrap_or(0);
    let row_last = match (vert.start.last(), vert.len.last()) {
        (Some(&s), Some(&l)) => s + l,
        _ => in_h,
    };
    let hor = precompute(in_w, out_w);
    let strip = resample_horizontal(data, in_w, channels, row_first, row_last - row_first, &hor);
    if !need_vertical {
        return Ok(strip);
    }
    let vert = Coeffs {
        start: vert.start.iter().map(|s| s - row_first).collect(),
        ..vert
    };
    Ok(resample_vertical(&strip, out_w, channels, &vert))
}
