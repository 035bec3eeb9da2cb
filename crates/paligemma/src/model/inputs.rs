//! The checks every request's inputs pass before they reach the model: token ids against the
//! vocabulary and the image-token count, pixel values against the resolution and a magnitude
//! bound. The model's inputs are untrusted (they come from JS callers, and through a server from
//! the network), so nothing is allocated on the device before they pass.

use candle_core::Tensor;

use super::PaliGemma;
use crate::error::{Error, Result};

/// Largest accepted `|pixelValues[i]|`. Normalised pixels lie in [−1, 1] (other
/// normalisations within a few units, raw 0–255 by mistake within 255); values like 3.4e38
/// overflow the vision tower's first matmul to infinity and the logits to NaN.
pub const MAX_PIXEL_MAGNITUDE: f32 = 1.0e4;

impl PaliGemma {
    /// Checks and uploads `3·R·R` CHW floats as `[1, 3, R, R]`.
    pub fn pixel_tensor(&self, pixel_values: &[f32]) -> Result<Tensor> {
        self.pixel_batch(&[pixel_values])
    }

    /// Checks and uploads one image per sequence as `[B, 3, R, R]`.
    pub fn pixel_batch(&self, images: &[&[f32]]) -> Result<Tensor> {
        let r = self.config.vision.image_size;
        let expected = 3 * r * r;
        let mut all = Vec::with_capacity(images.len() * expected);
        for pixel_values in images {
            if pixel_values.len() != expected {
                return Err(Error::invalid(
                    "pixelValues",
                    format!("has {} values; this model takes 3×{r}×{r} = {expected} (CHW float32)", pixel_values.len()),
                ));
            }
            if let Some(i) = pixel_values.iter().position(|v| !v.is_finite() || v.abs() > MAX_PIXEL_MAGNITUDE) {
                return Err(Error::invalid(
                    "pixelValues",
                    format!(
                        "value {i} is {}; values must be finite and within ±{MAX_PIXEL_MAGNITUDE} \
                         (normalised pixels lie in [−1, 1])",
                        pixel_values[i]
                    ),
                ));
            }
            all.extend_from_slice(pixel_values);
        }
        Ok(Tensor::from_vec(all, (images.len(), 3, r, r), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Validates token ids against the vocabulary and the image-token count.
    pub fn check_input_ids(&self, input_ids: &[u32]) -> Result<()> {
        if input_ids.is_empty() {
            return Err(Error::invalid("inputIds", "is empty"));
        }
        let vocab = self.config.text.vocab_size;
        let image_id = self.config.image_token_id;
        let mut images = 0;
        for (i, &id) in input_ids.iter().enumerate() {
            if id == image_id {
                images += 1;
            } else if id as usize >= vocab {
                return Err(Error::invalid("inputIds", format!("id {id} at index {i} is outside the vocabulary of {vocab}")));
            }
        }
        let p = self.config.num_image_tokens();
        if images != p {
            return Err(Error::invalid(
                "inputIds",
                format!("contains {images} image tokens (id {image_id}); this model expects exactly {p}, one per image patch"),
            ));
        }
        let max = self.decoder.max_positions();
        if input_ids.len() > max {
            return Err(Error::invalid("inputIds", format!("has {} tokens; the model supports at most {max} positions", input_ids.len())));
        }
        Ok(())
    }
}
