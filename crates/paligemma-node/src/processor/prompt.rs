//! `{ image, prompt }` generations: the request as JS sends it, and its completion on the
//! model's worker (image decode + resize at the model's resolution, prompt ids from the model's
//! tokenizer), right before the generation itself runs.

use napi_derive::napi;
use paligemma::image::DecodeOptions;
use paligemma::{GenerateRequest, SamplingParams};

use super::{core, decode_options, NativeDecodeOptions, NativeImageInput, OwnedImage};
use crate::error::NativeFailure;
use crate::worker::Context;

/// Default `maxNewTokens`, as in the TS layer, capped by what fits in the context.
const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// An `{ image, prompt }` generation request as JS sends it.
#[napi(object, object_to_js = false)]
pub struct NativeImagePromptRequest {
    pub image: NativeImageInput,
    pub decode: NativeDecodeOptions,
    /// The text after `<bos>`, e.g. `caption en`; `"\n"` is appended natively.
    pub prompt: String,
    /// Absent: 256, or what fits in the context after the prompt.
    pub max_new_tokens: Option<u32>,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub seed: f64,
    pub stop: Vec<String>,
    /// Gemma 2's sliding window on its sliding layers (off: full attention).
    pub sliding_window: Option<bool>,
}

/// What an `{ image, prompt }` request still needs from the model: its image size and tokenizer.
pub(crate) struct ImagePrompt {
    image: OwnedImage,
    decode: DecodeOptions,
    prompt: String,
    max_new_tokens: Option<u32>,
}

/// What [`ImagePrompt::prepare`] reports back to JS.
pub(crate) struct PreparedPrompt {
    pub prompt_ids: Vec<u32>,
    pub width: u32,
    pub height: u32,
}

/// Checks and copies the request on the JS thread; ids and pixels are filled in on the worker.
pub(crate) fn convert_image_request(
    req: &NativeImagePromptRequest,
) -> Result<(GenerateRequest, Vec<String>, ImagePrompt), NativeFailure> {
    if req.max_new_tokens == Some(0) {
        return Err(NativeFailure::invalid("maxNewTokens", "must be at least 1"));
    }
    let sampling: SamplingParams =
        crate::jobs::sampling_params(req.temperature, req.top_k, req.top_p, req.repetition_penalty, req.seed, &req.stop)?;
    let prompt = ImagePrompt {
        image: OwnedImage::from_native(&req.image)?,
        decode: decode_options(&req.decode)?,
        prompt: req.prompt.clone(),
        max_new_tokens: req.max_new_tokens,
    };
    let request = GenerateRequest {
        input_ids: Vec::new(),
        pixel_values: Vec::new(),
        max_new_tokens: 1,
        sampling,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        sliding_window: req.sliding_window.unwrap_or(false),
    };
    Ok((request, req.stop.clone(), prompt))
}

impl ImagePrompt {
    /// Builds `[<image>]×P + <bos> + prompt + "\n"` with the model's tokenizer and preprocesses
    /// the image at the model's resolution, into `request`.
    pub fn prepare(self, ctx: &Context, request: &mut GenerateRequest) -> Result<PreparedPrompt, NativeFailure> {
        let tokenizer = ctx.tokenizer.ok_or_else(|| {
            NativeFailure::invalid(
                "prompt",
                "an { image, prompt } request needs the model's tokenizer, and the model folder has no \
                 tokenizer.json; add it (PaliGemma checkpoints ship one) or pass { inputIds, pixelValues }",
            )
        })?;
        let config = ctx.model.config();
        let ids = tokenizer.build_prompt_for(config, &self.prompt).map_err(core)?;
        let context = config.text.max_position_embeddings;
        let room = context.saturating_sub(ids.len());
        let max_new_tokens = match self.max_new_tokens {
            None => DEFAULT_MAX_NEW_TOKENS.min(room),
            Some(n) => n as usize,
        };
        if max_new_tokens == 0 || max_new_tokens > room {
            return Err(NativeFailure::invalid(
                "maxNewTokens",
                format!(
                    "{max_new_tokens} new tokens after a {}-token prompt (image included) exceed the model's {context} positions; at most {room} fit",
                    ids.len()
                ),
            ));
        }
        let size = u32::try_from(config.vision.image_size).map_err(|_| NativeFailure::internal("image size overflows u32"))?;
        let pre = paligemma::image::preprocess(&self.image.as_input(), size, &self.decode).map_err(core)?;
        request.input_ids = ids.clone();
        request.pixel_values = pre.pixel_values;
        request.max_new_tokens = max_new_tokens;
        Ok(PreparedPrompt { prompt_ids: ids, width: pre.width, height: pre.height })
    }
}
