//! Segmentation masks (spec §4.2): the VQ-VAE decoder that turns the 16 `<seg###>` tokens of
//! one object into a 64×64 mask, and the pasting of that mask into the object's box.
//!
//! The decoder weights come from big_vision's `vae-oid.npz` converted to safetensors with the
//! PyTorch names and layouts kept (`_vq_vae._embedding`, `decoder.N.…`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::image::resize_bicubic_u8;
use crate::weights::{LoadMonitor, Scope, Weights};

/// Seg tokens per object; they form a 4×4 grid of codebook entries.
pub const SEG_TOKENS: usize = 16;
/// Side of a decoded mask.
pub const MASK_SIDE: usize = 64;
/// Pixels of a decoded mask.
pub const MASK_PIXELS: usize = MASK_SIDE * MASK_SIDE;

const CODEBOOK: &str = "_vq_vae._embedding";

/// A convolution with bias; `transposed` selects ConvTranspose2d(k4, s2, p1).
struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    transposed: bool,
}

impl Conv {
    fn load(scope: &Scope, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        Ok(Conv {
            weight: scope.get(&[c_out, c_in, k, k], "weight")?,
            bias: scope.get(&[c_out], "bias")?.reshape((1, c_out, 1, 1))?,
            padding: k / 2,
            transposed: false,
        })
    }

    /// PyTorch stores transposed-conv kernels as `[in, out, kh, kw]`, which is also candle's layout.
    fn load_transposed(scope: &Scope, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Conv {
            weight: scope.get(&[c_in, c_out, 4, 4], "weight")?,
            bias: scope.get(&[c_out], "bias")?.reshape((1, c_out, 1, 1))?,
            padding: 1,
            transposed: true,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.transposed {
            x.conv_transpose2d(&self.weight, self.padding, 0, 2, 1)?
        } else {
            x.conv2d(&self.weight, self.padding, 1, 1, 1)?
        };
        Ok(y.broadcast_add(&self.bias)?)
    }
}

/// `x + conv1×1(relu(conv3×3(relu(conv3×3(x)))))`, with no activation after the sum.
struct ResBlock {
    convs: [Conv; 3],
}

impl ResBlock {
    fn load(scope: &Scope, channels: usize) -> Result<Self> {
        let net = scope.pp("net");
        Ok(ResBlock {
            convs: [
                Conv::load(&net.pp(0), channels, channels, 3)?,
                Conv::load(&net.pp(2), channels, channels, 3)?,
                Conv::load(&net.pp(4), channels, channels, 1)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [a, b, c] = &self.convs;
        let h = a.forward(x)?.relu()?;
        let h = b.forward(&h)?.relu()?;
        Ok((c.forward(&h)? + x)?)
    }
}

/// The decoder half of the PaLI-3 mask VQ-VAE.
pub struct MaskDecoder {
    codebook: Tensor,
    codebook_size: usize,
    embed_dim: usize,
    conv_in: Conv,
    res: [ResBlock; 2],
    up: [Conv; 4],
    conv_out: Conv,
    device: Device,
}

impl MaskDecoder {
    /// Loads the decoder from a converted `vae-oid` safetensors file. The codebook size and its
    /// dimension come from the shape of `_vq_vae._embedding`, the layer widths (128, 128, 64, 32,
    /// 16 in vae-oid) from the layers' weights; every tensor is shape-checked against its
    /// neighbours.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let weights = Weights::open_files(&[path.to_path_buf()])?;
        let (codebook_size, embed_dim) = match weights.shape_of(CODEBOOK) {
            Some(&[k, e]) if k > 0 && e > 0 => (k, e),
            Some(found) => {
                return Err(Error::Weights(format!(
                    "tensor `{CODEBOOK}` in {} has shape {found:?}, expected [codebook size, embedding dim]",
                    path.display()
                )))
            }
            None => {
                return Err(Error::Weights(format!(
                    "tensor `{CODEBOOK}` (the [codebook size, embedding dim] codebook) is missing from {}",
                    path.display()
                )))
            }
        };
        let monitor = LoadMonitor { on_progress: None, is_cancelled: None };
        // The decoder is a few MB and runs once per object; f32 everywhere keeps it exact.
        let root = Scope::new(&weights, DType::F32, device, &monitor);
        let codebook = root.get(&[codebook_size, embed_dim], CODEBOOK)?;
        let dec = root.pp("decoder");
        let hidden = out_channels(&weights, "decoder.0.weight", 0, 128);
        let conv_in = Conv::load(&dec.pp(0), embed_dim, hidden, 1)?;
        let res = [ResBlock::load(&dec.pp(2), hidden)?, ResBlock::load(&dec.pp(3), hidden)?];
        let mut c_in = hidden;
        let mut upsample = |layer: usize, default: usize| {
            let c_out = out_channels(&weights, &format!("decoder.{layer}.weight"), 1, default);
            let conv = Conv::load_transposed(&dec.pp(layer), c_in, c_out);
            c_in = c_out;
            conv
        };
        let up = [upsample(4, 128)?, upsample(6, 64)?, upsample(8, 32)?, upsample(10, 16)?];
        Ok(MaskDecoder {
            codebook,
            codebook_size,
            embed_dim,
            conv_in,
            res,
            up,
            conv_out: Conv::load(&dec.pp(12), c_in, 1, 1)?,
            device: device.clone(),
        })
    }

    /// Number of codebook entries (valid seg indices are `0..codebook_size`).
    pub fn codebook_size(&self) -> usize {
        self.codebook_size
    }

    /// Dimension of one codebook entry.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// Decodes several objects at once into a `[n, 64, 64]` f32 tensor of raw decoder output
    /// (≈[−1, 1]; no clipping). `n` must be at least 1.
    pub fn decode_tensor(&self, objects: &[[u32; SEG_TOKENS]]) -> Result<Tensor> {
        if objects.is_empty() {
            return Err(Error::invalid("indices", "at least one object is needed"));
        }
        let mut flat = Vec::with_capacity(objects.len() * SEG_TOKENS);
        for (o, indices) in objects.iter().enumerate() {
            for (k, &v) in indices.iter().enumerate() {
                if v as usize >= self.codebook_size {
                    return Err(Error::invalid(
                        "indices",
                        format!(
                            "seg index {v} (object {o}, position {k}) is outside the codebook of {} entries",
                            self.codebook_size
                        ),
                    ));
                }
                flat.push(v);
            }
        }
        let n = objects.len();
        let ids = Tensor::from_vec(flat, n * SEG_TOKENS, &self.device)?;
        // Index k sits at row k / 4, column k % 4 of the grid, i.e. a row-major reshape.
        let x = self
            .codebook
            .index_select(&ids, 0)?
            .reshape((n, 4, 4, self.embed_dim))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let mut x = self.conv_in.forward(&x)?.relu()?;
        for block in &self.res {
            x = block.forward(&x)?;
        }
        for up in &self.up {
            x = up.forward(&x)?.relu()?;
        }
        let x = self.conv_out.forward(&x)?;
        Ok(x.reshape((n, MASK_SIDE, MASK_SIDE))?)
    }

    /// Decodes several objects into row-major 64×64 masks of raw decoder output. An empty input
    /// gives an empty output.
    pub fn decode(&self, objects: &[[u32; SEG_TOKENS]]) -> Result<Vec<[f32; MASK_PIXELS]>> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.decode_tensor(objects)?.flatten_all()?.to_vec1::<f32>()?;
        let masks: Vec<[f32; MASK_PIXELS]> =
            values.chunks_exact(MASK_PIXELS).filter_map(|chunk| <[f32; MASK_PIXELS]>::try_from(chunk).ok()).collect();
        if masks.len() != objects.len() {
            return Err(Error::Internal(format!(
                "mask decoder returned {} values for {} objects",
                values.len(),
                objects.len()
            )));
        }
        Ok(masks)
    }

    /// Like [`decode`](Self::decode) for a flat list of indices, 16 per object.
    pub fn decode_flat(&self, indices: &[u32]) -> Result<Vec<[f32; MASK_PIXELS]>> {
        if !indices.len().is_multiple_of(SEG_TOKENS) {
            return Err(Error::invalid(
                "indices",
                format!("{} seg indices is not a multiple of {SEG_TOKENS} per object", indices.len()),
            ));
        }
        let objects: Vec<[u32; SEG_TOKENS]> =
            indices.chunks_exact(SEG_TOKENS).filter_map(|c| <[u32; SEG_TOKENS]>::try_from(c).ok()).collect();
        self.decode(&objects)
    }
}

/// The output width of a layer as stored, so that narrower test decoders load too; a missing or
/// malformed tensor falls back to the vae-oid width and fails the shape check that follows, with
/// the tensor's name.
fn out_channels(weights: &Weights, name: &str, axis: usize, default: usize) -> usize {
    match weights.shape_of(name) {
        Some(shape) if shape.len() == 4 && shape[axis] > 0 => shape[axis],
        _ => default,
    }
}

/// Pastes a decoded mask into a `width`×`height` binary mask (row-major, 0 or 255) at the box
/// `(x1, y1, x2, y2)` in pixels (x2, y2 exclusive), as the official demo does: [`mask_to_u8`],
/// Pillow-exact bicubic resize to the box, keep values > 127.
///
/// The parts of the box outside the image are cut off. An empty box, a box that misses the image,
/// or one more than four times the image's size gives an all-zero mask; a `width`×`height` that
/// overflows `usize` gives an empty vector.
pub fn paste_mask(m64: &[f32; MASK_PIXELS], box_px: (i64, i64, i64, i64), width: u32, height: u32) -> Vec<u8> {
    paste_mask_with(m64, box_px, width, height, |src, src_w, src_h, dst_w, dst_h| {
        match (u32::try_from(src_w), u32::try_from(src_h), u32::try_from(dst_w), u32::try_from(dst_h)) {
            // A failed resize leaves the box as background, like any box we cannot paste.
            (Ok(sw), Ok(sh), Ok(dw), Ok(dh)) => resize_bicubic_u8(src, sw, sh, 1, dw, dh).unwrap_or_default(),
            _ => Vec::new(),
        }
    })
}

/// [`paste_mask`] with Pillow's bilinear resize, the filter of big_vision's evaluator.
pub fn paste_mask_bilinear(m64: &[f32; MASK_PIXELS], box_px: (i64, i64, i64, i64), width: u32, height: u32) -> Vec<u8> {
    paste_mask_with(m64, box_px, width, height, resize_bilinear)
}

/// The demo's `uint8(clip(m·0.5 + 0.5, 0, 1)·255)`, row-major 64×64; truncation, not rounding,
/// is what numpy's `astype(np.uint8)` does. NaN maps to 0.
pub fn mask_to_u8(m64: &[f32; MASK_PIXELS]) -> Vec<u8> {
    m64.iter().map(|&v| ((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8).collect()
}

/// [`paste_mask`] with a caller-chosen resize: `resize(src, src_w, src_h, dst_w, dst_h)` gets a
/// row-major u8 image and returns `dst_w·dst_h` bytes; missing bytes count as background.
pub fn paste_mask_with<F>(
    m64: &[f32; MASK_PIXELS],
    box_px: (i64, i64, i64, i64),
    width: u32,
    height: u32,
    resize: F,
) -> Vec<u8>
where
    F: FnOnce(&[u8], usize, usize, usize, usize) -> Vec<u8>,
{
    let Some(len) = (width as usize).checked_mul(height as usize) else { return Vec::new() };
    let mut out = vec![0u8; len];
    let (width, height) = (i64::from(width), i64::from(height));
    let (x1, y1, x2, y2) = box_px;
    let (Some(box_w), Some(box_h)) = (box_side(x1, x2, width), box_side(y1, y2, height)) else { return out };
    // The visible part of the box, in image coordinates.
    let (vx1, vx2) = (x1.max(0), x2.min(width));
    let (vy1, vy2) = (y1.max(0), y2.min(height));
    if vx1 >= vx2 || vy1 >= vy2 {
        return out;
    }
    let resized = resize(&mask_to_u8(m64), MASK_SIDE, MASK_SIDE, box_w, box_h);
    for y in vy1..vy2 {
        let src_row = (y - y1) as usize * box_w;
        let dst_row = (y * width) as usize;
        for x in vx1..vx2 {
            let v = resized.get(src_row + (x - x1) as usize).copied().unwrap_or(0);
            if let Some(px) = out.get_mut(dst_row + x as usize) {
                *px = if v > 127 { 255 } else { 0 };
            }
        }
    }
    out
}

/// The box side `hi − lo`, if positive and at most four times the image side (a larger box is
/// a caller error, and resizing to it could exhaust memory).
fn box_side(lo: i64, hi: i64, image_side: i64) -> Option<usize> {
    let side = hi.checked_sub(lo)?;
    (side > 0 && side <= image_side.max(1) * 4).then_some(side as usize)
}

/// Bilinear resize of a row-major u8 image, computed the way PIL's `Image.resize(…, BILINEAR)`
/// does: separable, horizontal pass first, a triangle filter widened when downscaling, and
/// 22-bit fixed-point weights with rounding.
pub fn resize_bilinear(src: &[u8], src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Vec<u8> {
    let (Some(src_len), Some(dst_len), Some(tmp_len)) =
        (src_w.checked_mul(src_h), dst_w.checked_mul(dst_h), dst_w.checked_mul(src_h))
    else {
        return Vec::new();
    };
    if src_len == 0 || dst_len == 0 || src.len() < src_len {
        return vec![0; dst_len];
    }
    let horizontal = if dst_w == src_w {
        src[..src_len].to_vec()
    } else {
        let taps = filter_taps(src_w, dst_w);
        let mut tmp = vec![0u8; tmp_len];
        for y in 0..src_h {
            let row = &src[y * src_w..(y + 1) * src_w];
            for (x, (start, weights)) in taps.iter().enumerate() {
                tmp[y * dst_w + x] = apply(weights.iter().enumerate().map(|(i, &w)| (row[start + i], w)));
            }
        }
        tmp
    };
    if dst_h == src_h {
        return horizontal;
    }
    let taps = filter_taps(src_h, dst_h);
    let mut out = vec![0u8; dst_len];
    for (y, (start, weights)) in taps.iter().enumerate() {
        for x in 0..dst_w {
            let column = weights.iter().enumerate().map(|(i, &w)| (horizontal[(start + i) * dst_w + x], w));
            out[y * dst_w + x] = apply(column);
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` for the triangle filter: for each output pixel, the first input
/// pixel and the fixed-point weights of the inputs it reads.
fn filter_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates; values below zero are clamped right after anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w } * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (w - 0.5) as i32
                    } else {
                        (w + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn apply(taps: impl Iterator<Item = (u8, i32)>) -> u8 {
    let sum = taps.fold(1i64 << (PRECISION_BITS - 1), |acc, (v, w)| acc + i64::from(v) * i64::from(w));
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}
