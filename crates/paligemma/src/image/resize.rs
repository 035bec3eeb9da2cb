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
/// `start[i]`, weighted by [`Coeffs::taps`]`(i)`.
///
/// Pillow keeps every sample's taps in one `out_size × ksize` table. That table holds about four
/// taps per input sample along the axis (`ksize ≈ 4 · in / out` when downscaling), which is
/// fine for photos but 1.6 GB for a 10⁸-pixel-tall image. Past [`TABLE_LIMIT`] taps the table
/// is not built and each sample's taps are computed when needed, by the same code in the same
/// order, so the values are identical.
struct Coeffs {
    in_size: usize,
    scale: f64,
    filterscale: f64,
    support: f64,
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    /// `start.len() × ksize` taps, or empty when computed on demand.
    table: Vec<i32>,
}

/// Largest tap table built up front: 4 M taps (16 MiB), every axis up to about 10⁶ samples.
const TABLE_LIMIT: usize = 4 << 20;

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
    let mut c = Coeffs {
        in_size,
        scale,
        filterscale,
        support,
        ksize,
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        table: Vec::new(),
    };
    for xx in 0..out_size {
        let (xmin, n) = c.window(xx);
        c.start.push(xmin);
        c.len.push(n);
    }
    if out_size.saturating_mul(ksize) <= TABLE_LIMIT {
        let mut table = vec![0i32; out_size * ksize];
        let mut weights = vec![0f64; ksize];
        for (xx, row) in table.chunks_exact_mut(ksize).enumerate() {
            c.compute_taps(xx, &mut weights, row);
        }
        c.table = table;
    }
    c
}

impl Coeffs {
    fn center(&self, xx: usize) -> f64 {
        (xx as f64 + 0.5) * self.scale
    }

    /// First input sample and number of samples read by output sample `xx`.
    fn window(&self, xx: usize) -> (usize, usize) {
        let center = self.center(xx);
        // `(int)` in C truncates toward zero, as does `as i64`.
        let xmin = ((center - self.support + 0.5) as i64).max(0);
        let xmax = ((center + self.support + 0.5) as i64).min(self.in_size as i64);
        let n = (xmax - xmin).clamp(0, self.ksize as i64) as usize;
        (xmin as usize, n)
    }

    /// Pillow's weights for output sample `xx`, normalised and quantised, into `taps`.
    fn compute_taps(&self, xx: usize, weights: &mut [f64], taps: &mut [i32]) {
        let center = self.center(xx);
        let ss = 1.0 / self.filterscale;
        let (xmin, n) = (self.start[xx], self.len[xx]);
        let mut ww = 0.0f64;
        for (x, w) in weights.iter_mut().enumerate().take(n) {
            *w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *w;
        }
        for (tap, &w) in taps.iter_mut().zip(&weights[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *tap = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
    }

    /// The `len[xx]` taps of output sample `xx`, from the table or computed into `scratch`.
    fn taps<'a>(&'a self, xx: usize, scratch: &'a mut TapScratch) -> &'a [i32] {
        let n = self.len[xx];
        if !self.table.is_empty() {
            return &self.table[xx * self.ksize..xx * self.ksize + n];
        }
        scratch.weights.resize(self.ksize, 0.0);
        scratch.taps.resize(self.ksize, 0);
        self.compute_taps(xx, &mut scratch.weights, &mut scratch.taps);
        &scratch.taps[..n]
    }
}

/// Buffers for taps computed on demand (one output sample's worth).
#[derive(Default)]
struct TapScratch {
    weights: Vec<f64>,
    taps: Vec<i32>,
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
    let mut scratch = TapScratch::default();
    for (y, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
        let in_row = &src[(row0 + y) * in_w * channels..(row0 + y + 1) * in_w * channels];
        for (xx, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
            let k = c.taps(xx, &mut scratch);
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

/// Vertical pass; `src` starts at input row `row0`.
fn resample_vertical(src: &[u8], width: usize, channels: usize, c: &Coeffs, row0: usize) -> Vec<u8> {
    let stride = width * channels;
    let out_h = c.start.len();
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i64; stride];
    let mut scratch = TapScratch::default();
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let k = c.taps(yy, &mut scratch);
        acc.fill(HALF);
        for (dy, &w) in k.iter().enumerate() {
            let y = c.start[yy] + dy - row0;
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
        return Ok(resample_vertical(data, in_w, channels, &vert, 0));
    }
    let hor = precompute(in_w, out_w);
    if !need_vertical {
        return Ok(resample_horizontal(data, in_w, channels, 0, in_h, &hor));
    }

    // Like Pillow, the horizontal pass only produces the rows the vertical pass will read, and
    // the vertical taps are rebased onto that strip.
    let row_first = vert.start.first().copied().unwrap_or(0);
    let row_last = match (vert.start.last(), vert.len.last()) {
        (Some(&s), Some(&l)) => s + l,
        _ => in_h,
    };
    let strip_rows = row_last - row_first;
    if !pillow_order_fits(out_w * strip_rows * channels, in_w * out_h * channels) {
        // The vertical pass first keeps the intermediate at in_w × out_h (see below).
        let columns = resample_vertical(data, in_w, channels, &vert, 0);
        return Ok(resample_horizontal(&columns, in_w, channels, 0, out_h, &hor));
    }
    let strip = resample_horizontal(data, in_w, channels, row_first, strip_rows, &hor);
    Ok(resample_vertical(&strip, out_w, channels, &vert, row_first))
}

/// Largest intermediate image (bytes) for which Pillow's pass order is always kept.
const PILLOW_ORDER_BUDGET: usize = 32 << 20;

/// Whether to run the passes in Pillow's order (horizontal, then vertical), which is bit-exact,
/// given the bytes of the intermediate image in that order and in the other.
///
/// Pillow's order holds the horizontal pass's output for every input row, `out_w × in_h`: for a
/// 1 × 10⁸ image resized to 224² that is 67 GB, and its time grows with it. The other order
/// holds `in_w × out_h` instead. So Pillow's order is kept whenever its intermediate is within
/// [`PILLOW_ORDER_BUDGET`] (every image up to 50 000 rows at 224 px, 12 500 at 896 px) or no
/// larger than the other's; past that, the vertical pass runs first. The two orders round the
/// intermediate to 8 bits at different places, so pixels may then differ from Pillow's by a
/// level or two; the test `swapped_order_stays_within_two_levels` measures it. Either way the
/// intermediate is at most `max(budget, S × min(in_w, in_h) × channels)`-ish bytes for an
/// `S × S` target: bounded by the output size times the shorter side, not by the longer one.
fn pillow_order_fits(pillow_bytes: usize, swapped_bytes: usize) -> bool {
    pillow_bytes <= PILLOW_ORDER_BUDGET || pillow_bytes <= swapped_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, textured test image (LCG noise over gradients).
    fn image(w: usize, h: usize, c: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..w * h * c)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let px = i / c;
                let smooth = ((px % w) * 255 / w.max(1) + (px / w) * 255 / h.max(1)) / 2;
                (smooth as u32 / 2 + (state >> 25)) as u8
            })
            .collect()
    }

    fn both_orders(data: &[u8], w: usize, h: usize, c: usize, ow: usize, oh: usize) -> (Vec<u8>, Vec<u8>) {
        let vert = precompute(h, oh);
        let hor = precompute(w, ow);
        let pillow = resample_vertical(&resample_horizontal(data, w, c, 0, h, &hor), ow, c, &vert, 0);
        let swapped = resample_horizontal(&resample_vertical(data, w, c, &vert, 0), w, c, 0, oh, &hor);
        (pillow, swapped)
    }

    #[test]
    fn swapped_order_stays_within_two_levels() {
        // Thin and tall, thin and wide, and a plain downscale, each large enough to average
        // thousands of pixels per output pixel like the images that take the swapped order.
        for (w, h, c, ow, oh) in [(3, 20_000, 3, 224, 224), (20_000, 2, 1, 224, 224), (900, 700, 3, 224, 224), (7, 5_000, 3, 448, 448)] {
            let data = image(w, h, c);
            let (pillow, swapped) = both_orders(&data, w, h, c, ow, oh);
            let worst = pillow.iter().zip(&swapped).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(worst <= 2, "{w}×{h}→{ow}×{oh}: orders differ by {worst} levels");
        }
    }

    #[test]
    fn taps_on_demand_equal_the_table() {
        for (n_in, n_out) in [(5usize, 224usize), (1000, 224), (224, 224 * 3), (123_457, 448)] {
            let with_table = precompute(n_in, n_out);
            assert!(!with_table.table.is_empty());
            let on_demand = Coeffs { table: Vec::new(), ..precompute(n_in, n_out) };
            let (mut a, mut b) = (TapScratch::default(), TapScratch::default());
            for i in 0..n_out {
                assert_eq!(with_table.taps(i, &mut a), on_demand.taps(i, &mut b), "{n_in}→{n_out} sample {i}");
            }
        }
        // 10⁸ → 224 would need 400 M taps: no table.
        assert!(precompute(100_000_000, 224).table.is_empty());
    }

    #[test]
    fn thin_images_take_the_bounded_order() {
        // 1 × 10⁸ to 224²: Pillow's order would hold 224 × 10⁸ × 3 bytes.
        assert!(!pillow_order_fits(224 * 100_000_000 * 3, 224 * 3));
        // Ordinary photos keep Pillow's order at every model resolution.
        for s in [224usize, 448, 896] {
            assert!(pillow_order_fits(s * 3000 * 3, 4000 * s * 3));
            assert!(pillow_order_fits(s * 12_000 * 3, 9000 * s * 3));
        }
    }

    #[test]
    fn tall_thin_image_resizes_in_bounded_memory() {
        // 1 × 4·10⁷ grey: the regression that allocated 26.9 GB before aborting. The vertical
        // pass first reads each input pixel a few times and holds 224 × 3 bytes in between.
        let (w, h) = (1usize, 40_000_000usize);
        let data: Vec<u8> = (0..w * h).map(|i| (i / 200_000) as u8).collect();
        let out = resize_bicubic_u8(&data, w as u32, h as u32, 1, 224, 224).unwrap();
        assert_eq!(out.len(), 224 * 224);
        // A vertical ramp: every row is constant, and rows go from dark to bright.
        assert!(out[..224].iter().all(|&v| v == out[0]));
        assert!(out[0] < 10 && out[223 * 224] > 190, "{} {}", out[0], out[223 * 224]);

        // The same image lying down: Pillow's order is cheap here, and the horizontal taps
        // (400 M of them) are computed per output pixel instead of tabulated.
        let out = resize_bicubic_u8(&data, h as u32, w as u32, 1, 224, 224).unwrap();
        assert!((0..224).all(|y| out[y * 224..(y + 1) * 224] == out[..224]), "every row the same");
        assert!(out[0] < 10 && out[223] > 190, "{} {}", out[0], out[223]);
    }
}
