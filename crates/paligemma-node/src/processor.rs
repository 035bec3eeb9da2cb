//! Images in, pixels, masks and pictures out: the native half of the task API.
//!
//! - `preprocessImage(image, size, options)`: decode + Pillow-exact resize + normalise.
//! - `decodeMasks(vaePath, segIndices, boxes, width, height, maxPixels)`: the VQ-VAE mask decoder
//!   and the pasting of each 64×64 mask into its box, at the original image's size.
//! - `renderAnnotations(image, options, items)`: boxes, labels and mask overlays, as a PNG.
//! - `{ image, prompt }` generations ([`prompt`]): an [`ImagePrompt`] is resolved on the model's
//!   worker (see `jobs::GenerateJob`), so decoding a large image never blocks the event loop and
//!   the request keeps its place in the model's FIFO queue.
//!
//! The stand-alone functions run as napi `AsyncTask`s on libuv's thread pool. Like every other
//! asynchronous entry point they resolve with a `NativeFailure` value instead of rejecting, and
//! any panic inside becomes ERR_INTERNAL. Buffers coming from JS are copied on the JS thread,
//! because JS may change them while a task runs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use napi::bindgen_prelude::{AsyncTask, Buffer, Either, Float32Array, Uint32Array, Uint8Array};
use napi::{Env, Task};
use napi_derive::napi;
use paligemma::image::{DecodeOptions, ImageInput};
use paligemma::render::Annotation;
use paligemma::segmentation::{paste_mask, MaskDecoder, SEG_TOKENS};
use paligemma::Device;

use crate::error::{guard, NativeFailure};

mod prompt;

pub(crate) use prompt::{convert_image_request, ImagePrompt, NativeImagePromptRequest, PreparedPrompt};

/// An image as the TS layer passes it (validated there; checked again here).
#[napi(object, object_to_js = false)]
pub struct NativeImageInput {
    /// 'path' | 'encoded' | 'raw'
    pub kind: String,
    pub path: Option<String>,
    /// Encoded file bytes ('encoded') or interleaved 8-bit pixels ('raw').
    pub data: Option<Uint8Array>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// 1, 3 or 4 ('raw' only).
    pub channels: Option<u32>,
}

/// Decoding limits.
#[napi(object, object_to_js = false)]
pub struct NativeDecodeOptions {
    /// Largest accepted width × height, an integer ≥ 1.
    pub max_pixels: f64,
    pub apply_exif_orientation: bool,
}

/// An image owned by Rust, safe to move to another thread.
pub(crate) enum OwnedImage {
    Path(PathBuf),
    Encoded(Vec<u8>),
    Raw { data: Vec<u8>, width: u32, height: u32, channels: u8 },
}

impl OwnedImage {
    /// Copies the image out of JS memory (call on the JS thread).
    pub fn from_native(image: &NativeImageInput) -> Result<Self, NativeFailure> {
        let data = || image.data.as_ref().map(|d| d.to_vec()).ok_or_else(|| NativeFailure::invalid("image", "has no data"));
        match image.kind.as_str() {
            "path" => match &image.path {
                Some(path) if !path.is_empty() => Ok(OwnedImage::Path(PathBuf::from(path))),
                _ => Err(NativeFailure::invalid("image", "is an empty path")),
            },
            "encoded" => Ok(OwnedImage::Encoded(data()?)),
            "raw" => {
                let (Some(width), Some(height), Some(channels)) = (image.width, image.height, image.channels) else {
                    return Err(NativeFailure::invalid("image", "raw pixels need width, height and channels"));
                };
                // Out-of-range channel counts are the decoder's to report (ERR_INVALID_IMAGE).
                let channels = u8::try_from(channels).unwrap_or(u8::MAX);
                Ok(OwnedImage::Raw { data: data()?, width, height, channels })
            }
            other => Err(NativeFailure::invalid("image", format!("unknown image kind {other:?}"))),
        }
    }

    pub fn as_input(&self) -> ImageInput<'_> {
        match self {
            OwnedImage::Path(path) => ImageInput::Path(path),
            OwnedImage::Encoded(bytes) => ImageInput::Encoded(bytes),
            OwnedImage::Raw { data, width, height, channels } => {
                ImageInput::Raw { data, width: *width, height: *height, channels: *channels }
            }
        }
    }
}

fn max_pixels(value: f64) -> Result<u64, NativeFailure> {
    if value.is_finite() && value >= 1.0 && value.fract() == 0.0 && value <= 9_007_199_254_740_991.0 {
        Ok(value as u64)
    } else {
        Err(NativeFailure::invalid("maxPixels", format!("{value} must be an integer ≥ 1")))
    }
}

pub(crate) fn decode_options(options: &NativeDecodeOptions) -> Result<DecodeOptions, NativeFailure> {
    Ok(DecodeOptions { max_pixels: max_pixels(options.max_pixels)?, apply_exif_orientation: options.apply_exif_orientation })
}

pub(crate) fn core(e: paligemma::Error) -> NativeFailure {
    NativeFailure::from_core(&e, false)
}

/// Runs a task body so that a panic becomes a failure value instead of crossing into libuv.
fn contained<T>(f: impl FnOnce() -> Result<T, NativeFailure>) -> Result<T, NativeFailure> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(NativeFailure::from_panic(payload)))
}

/// A task whose arguments were already rejected on the JS thread resolves with that failure.
type Prepared<T> = Result<T, NativeFailure>;

// ---------------------------------------------------------------------------------------------
// preprocessImage

#[napi(object)]
pub struct NativePreprocessed {
    /// `[3, size, size]` CHW float32 in [−1, 1].
    pub pixel_values: Float32Array,
    /// Size of the decoded image before resizing.
    pub width: u32,
    pub height: u32,
}

pub struct PreprocessTask(Prepared<(OwnedImage, u32, DecodeOptions)>);

impl Task for PreprocessTask {
    type Output = Result<paligemma::image::Preprocessed, NativeFailure>;
    type JsValue = Either<NativePreprocessed, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(contained(|| {
            let (image, size, options) = self.0.as_ref().map_err(Clone::clone)?;
            paligemma::image::preprocess(&image.as_input(), *size, options).map_err(core)
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(match output {
            Ok(p) => Either::A(NativePreprocessed { pixel_values: Float32Array::new(p.pixel_values), width: p.width, height: p.height }),
            Err(failure) => Either::B(failure),
        })
    }
}

/// Decodes `image`, resizes it to `size × size` and normalises it, off the JS thread.
#[napi(catch_unwind)]
pub fn preprocess_image(image: NativeImageInput, size: u32, options: NativeDecodeOptions) -> napi::Result<AsyncTask<PreprocessTask>> {
    guard(|| {
        let args = (|| Ok((OwnedImage::from_native(&image)?, size, decode_options(&options)?)))();
        Ok(AsyncTask::new(PreprocessTask(args)))
    })
}

// ---------------------------------------------------------------------------------------------
// decodeMasks

/// The last mask decoder loaded, kept because segmenting usually repeats with the same file.
struct CachedDecoder {
    key: (PathBuf, u64, Option<SystemTime>),
    decoder: Arc<MaskDecoder>,
}

static DECODER: Mutex<Option<CachedDecoder>> = Mutex::new(None);

const VAE_HINT: &str = "the mask decoder weights are big_vision's vae-oid.npz \
    (gs://big_vision/paligemma/vae-oid.npz, also in the Hugging Face Space big-vision/paligemma-hf) \
    converted to safetensors: npx paligemma convert-vae vae-oid.npz vae-oid.safetensors";

fn mask_decoder(path: &Path) -> Result<Arc<MaskDecoder>, NativeFailure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| NativeFailure::invalid("vaePath", format!("cannot read {}: {e}; {VAE_HINT}", path.display())))?;
    if !meta.is_file() {
        return Err(NativeFailure::invalid("vaePath", format!("{} is not a file; {VAE_HINT}", path.display())));
    }
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let mut cache = DECODER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cached) = cache.as_ref().filter(|c| c.key == key) {
        return Ok(cached.decoder.clone());
    }
    let decoder = MaskDecoder::load(path, &Device::Cpu).map_err(|e| {
        if path.extension().is_some_and(|x| x.eq_ignore_ascii_case("npz")) {
            NativeFailure::invalid("vaePath", format!("{} is the unconverted .npz archive; {VAE_HINT}", path.display()))
        } else {
            NativeFailure::new(e.code().as_str(), format!("cannot load the mask decoder from {} (`vaePath`): {e}", path.display()))
        }
    })?;
    let decoder = Arc::new(decoder);
    *cache = Some(CachedDecoder { key, decoder: decoder.clone() });
    Ok(decoder)
}

pub struct MasksTask(Prepared<MaskArgs>);

pub struct MaskArgs {
    vae_path: PathBuf,
    objects: Vec<[u32; SEG_TOKENS]>,
    boxes: Vec<(i64, i64, i64, i64)>,
    width: u32,
    height: u32,
}

impl MaskArgs {
    fn run(&self) -> Result<Vec<Vec<u8>>, NativeFailure> {
        let decoder = mask_decoder(&self.vae_path)?;
        let masks = decoder.decode(&self.objects).map_err(core)?;
        Ok(masks.iter().zip(&self.boxes).map(|(m, &b)| paste_mask(m, b, self.width, self.height)).collect())
    }
}

impl Task for MasksTask {
    type Output = Result<Vec<Vec<u8>>, NativeFailure>;
    type JsValue = Either<Vec<Uint8Array>, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(contained(|| self.0.as_ref().map_err(Clone::clone)?.run()))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(match output {
            Ok(masks) => Either::A(masks.into_iter().map(Uint8Array::new).collect()),
            Err(failure) => Either::B(failure),
        })
    }
}

/// Decodes one mask per object (16 seg indices each, flat) and pastes it into the object's box
/// (`x1, y1, x2, y2` pixels, flat) of a `width × height` image: binary 0/255 masks, row-major.
#[napi(catch_unwind)]
pub fn decode_masks(
    vae_path: String,
    seg_indices: Uint32Array,
    boxes: Vec<f64>,
    width: u32,
    height: u32,
    max_pixels: f64,
) -> napi::Result<AsyncTask<MasksTask>> {
    guard(|| {
        let args = (|| {
            let limit = self::max_pixels(max_pixels)?;
            if width == 0 || height == 0 || u64::from(width) * u64::from(height) > limit {
                return Err(NativeFailure::invalid(
                    "width/height",
                    format!("a {width}×{height} mask must have between 1 and maxPixels = {limit} pixels"),
                ));
            }
            let objects: Vec<[u32; SEG_TOKENS]> =
                seg_indices.chunks_exact(SEG_TOKENS).filter_map(|c| <[u32; SEG_TOKENS]>::try_from(c).ok()).collect();
            if seg_indices.len() != objects.len() * SEG_TOKENS || boxes.len() != objects.len() * 4 {
                return Err(NativeFailure::invalid(
                    "segIndices",
                    format!("{} seg indices and {} box values do not describe whole objects (16 and 4 each)", seg_indices.len(), boxes.len()),
                ));
            }
            let px = |v: f64| v.round() as i64; // saturating; NaN → 0
            let boxes = boxes.chunks_exact(4).map(|b| (px(b[0]), px(b[1]), px(b[2]), px(b[3]))).collect();
            if vae_path.is_empty() {
                return Err(NativeFailure::invalid("vaePath", format!("is empty; {VAE_HINT}")));
            }
            Ok(MaskArgs { vae_path: PathBuf::from(vae_path), objects, boxes, width, height })
        })();
        Ok(AsyncTask::new(MasksTask(args)))
    })
}

// ---------------------------------------------------------------------------------------------
// renderAnnotations

/// One object to draw; the box in pixels, `x2`/`y2` exclusive.
#[napi(object, object_to_js = false)]
pub struct NativeAnnotation {
    pub label: String,
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
    /// A width × height mask of the image (non-zero = object).
    pub mask: Option<Uint8Array>,
}

struct OwnedAnnotation {
    label: String,
    rect: [i64; 4],
    mask: Option<Vec<u8>>,
}

pub struct RenderTask(Prepared<(OwnedImage, DecodeOptions, Vec<OwnedAnnotation>)>);

impl Task for RenderTask {
    type Output = Result<Vec<u8>, NativeFailure>;
    type JsValue = Either<Buffer, NativeFailure>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(contained(|| {
            let (image, options, items) = self.0.as_ref().map_err(Clone::clone)?;
            let mut rgb = paligemma::image::decode(&image.as_input(), options).map_err(core)?;
            let annotations: Vec<Annotation> = items
                .iter()
                .map(|a| {
                    let [x1, y1, x2, y2] = a.rect;
                    Annotation { label: &a.label, x1, y1, x2, y2, mask: a.mask.as_deref() }
                })
                .collect();
            paligemma::render::annotate(&mut rgb, &annotations).map_err(core)?;
            paligemma::image::encode_png(&rgb.data, rgb.width, rgb.height, 3).map_err(core)
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(match output {
            Ok(png) => Either::A(Buffer::from(png)),
            Err(failure) => Either::B(failure),
        })
    }
}

/// Decodes `image`, draws `items` on it (masks, then boxes, then labels) and encodes a PNG.
#[napi(catch_unwind)]
pub fn render_annotations(
    image: NativeImageInput,
    options: NativeDecodeOptions,
    items: Vec<NativeAnnotation>,
) -> napi::Result<AsyncTask<RenderTask>> {
    guard(|| {
        let args = (|| {
            let px = |v: f64| v.round() as i64;
            let items = items
                .iter()
                .map(|a| OwnedAnnotation {
                    label: a.label.clone(),
                    rect: [px(a.x1), px(a.y1), px(a.x2), px(a.y2)],
                    mask: a.mask.as_ref().map(|m| m.to_vec()),
                })
                .collect();
            Ok((OwnedImage::from_native(&image)?, decode_options(&options)?, items))
        })();
        Ok(AsyncTask::new(RenderTask(args)))
    })
}
