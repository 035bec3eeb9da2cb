//! The text stage: tokenizer loading, prompt layout (spec §3.2), task prefixes (§3.4), streaming
//! detokenisation and stop strings.
//!
//! The prompt is `[<image>]×P + <bos> + tok(prefix + "\n")`, built from ids rather than from a
//! string of special-token literals, so user text can never add or remove image tokens or
//! insert a second `<bos>` (spec §8 P5).

mod extend;
mod length;
mod shared;
mod stop;
mod stream;
mod task;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokenizers::{Decoder, Tokenizer};

use crate::config::Config;
use crate::error::{Error, Result};

pub use extend::{
    extend_gemma_tokenizer, GEMMA_VOCAB_SIZE, IMAGE_TOKEN_ID, LOC_TOKENS, SEG_TOKENS,
};
pub use stop::{StopEvent, StopMatcher};
pub use stream::TextStream;
pub use task::Task;

/// A loaded `tokenizer.json`, configured for PaliGemma prompts. Cloning is cheap (shared).
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: Arc<Tokenizer>,
    /// Whether the decoder turns `<0xHH>` pieces into raw bytes; the stream then reassembles
    /// multi-byte characters itself.
    byte_fallback: bool,
    /// The longest text one token can cover (see [`length::PromptBound`]).
    bound: length::PromptBound,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("byte_fallback", &self.byte_fallback)
            .finish()
    }
}

/// Just enough of `tokenizer.json` to check the ids it declares for its added tokens.
#[derive(Deserialize)]
struct AddedTokensOnly {
    #[serde(default)]
    added_tokens: Vec<DeclaredToken>,
}

#[derive(Deserialize)]
struct DeclaredToken {
    id: u32,
    content: String,
}

impl PromptTokenizer {
    /// Loads `<model_dir>/tokenizer.json` (see [`from_file`](Self::from_file)).
    pub fn from_dir(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            return Err(Error::Tokenizer(format!(
                "no tokenizer.json in {} (PaliGemma checkpoints ship one; for a bare Gemma \
                 tokenizer.json, build it with scripts/make-paligemma-tokenizer.mjs or \
                 paligemma::prompt::extend_gemma_tokenizer)",
                model_dir.display()
            )));
        }
        Self::from_file(&path)
    }

    /// Loads a `tokenizer.json` file: a regular file of at most
    /// [`MAX_TOKENIZER_BYTES`](crate::files::MAX_TOKENIZER_BYTES). Models loaded from the same
    /// unchanged file share one parsed tokenizer (PaliGemma's takes about 120 MB), for as long
    /// as any of them holds it.
    pub fn from_file(path: &Path) -> Result<Self> {
        shared::load(path, |bytes| {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| Error::Tokenizer(format!("{} is not UTF-8 text: {e}", path.display())))?;
            Self::parse(text, &path.display().to_string())
        })
    }

    /// Loads a tokenizer from the text of a `tokenizer.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        Self::parse(json, "tokenizer JSON")
    }

    fn parse(json: &str, origin: &str) -> Result<Self> {
        let mut tok: Tokenizer = json.parse().map_err(|e| {
            Error::Tokenizer(format!("{origin} is not a valid tokenizer.json: {e}"))
        })?;
        // A tokenizer.json may carry truncation or padding; either would silently change prompts.
        tok.with_truncation(None)
            .map_err(|e| Error::Tokenizer(format!("{origin}: cannot disable truncation: {e}")))?;
        tok.with_padding(None);
        // Special-token literals in user text (`<image>`, `<bos>`, …) stay plain text; the
        // special ids are placed by `build_prompt` only.
        tok.set_encode_special_tokens(true);
        let byte_fallback = tok
            .get_decoder()
            .and_then(|d| d.decode(vec!["<0x41>".to_string()]).ok())
            .is_some_and(|s| s == "A");
        let bound = length::PromptBound::of(&tok);
        let this = Self {
            inner: Arc::new(tok),
            byte_fallback,
            bound,
        };
        this.check_declared_ids(json, origin)?;
        this.check_decoder_is_additive(origin)?;
        Ok(this)
    }

    /// `tokenizers` ignores the ids written in `added_tokens` (it numbers new tokens after the
    /// model vocabulary and only logs a mismatch), so a file with a gap would shift `<image>` and
    /// every `<loc>` id without any error. Refuse such files instead.
    fn check_declared_ids(&self, json: &str, origin: &str) -> Result<()> {
        let declared: AddedTokensOnly = serde_json::from_str(json)
            .map_err(|e| Error::Tokenizer(format!("{origin}: malformed added_tokens: {e}")))?;
        for t in &declared.added_tokens {
            let actual = self.inner.token_to_id(&t.content);
            if actual != Some(t.id) {
                let actual = actual.map_or("none".to_string(), |a| a.to_string());
                return Err(Error::Tokenizer(format!(
                    "{origin}: added token {:?} is declared with id {} but gets id {actual}; \
                     added tokens must continue the model vocabulary without gaps",
                    t.content, t.id
                )));
            }
        }
        Ok(())
    }

    /// The stream decodes token by token, which equals a joint decode only for decoders without
    /// context (Gemma's: no dummy-prefix space to strip). Probe it once so a foreign tokenizer
    /// fails loudly instead of losing spaces.
    fn check_decoder_is_additive(&self, origin: &str) -> Result<()> {
        let ids = self.encode_text(" a b")?;
        let joint = self
            .inner
            .decode(&ids, true)
            .map_err(|e| Error::Tokenizer(format!("{origin}: cannot decode: {e}")))?;
        let piecewise = self.decode(&ids)?;
        if joint != piecewise {
            return Err(Error::Tokenizer(format!(
                "{origin}: unsupported decoder: \" a b\" decodes to {joint:?} but token by token \
                 to {piecewise:?} (PaliGemma's tokenizer has no dummy-prefix space)"
            )));
        }
        Ok(())
    }

    /// Checks that the ids `config.json` relies on exist in this tokenizer and name the
    /// expected tokens, and that every tokenizer id has an embedding row.
    pub fn check_against(&self, config: &Config) -> Result<()> {
        let vocab = self.vocab_size();
        if vocab > config.text.vocab_size {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {vocab} entries but the model's vocabulary has only {} rows",
                config.text.vocab_size
            )));
        }
        self.check_id("<image>", config.image_token_id, "image_token_index")?;
        self.check_id("<bos>", config.bos_token_id, "bos_token_id")?;
        for &eos in &config.eos_token_ids {
            if self.inner.id_to_token(eos).is_none() {
                return Err(Error::Tokenizer(format!(
                    "config.json eos_token_id {eos} is not in the tokenizer ({vocab} entries)"
                )));
            }
        }
        Ok(())
    }

    fn check_id(&self, token: &str, id: u32, field: &str) -> Result<()> {
        if let Some(actual) = self.inner.token_to_id(token) {
            if actual != id {
                return Err(Error::Tokenizer(format!(
                    "the tokenizer's {token} is id {actual} but config.json {field} is {id}"
                )));
            }
        }
        if self.inner.id_to_token(id).is_none() {
            return Err(Error::Tokenizer(format!(
                "config.json {field} {id} is not in the tokenizer ({} entries)",
                self.vocab_size()
            )));
        }
        Ok(())
    }

    /// Token ids of `text` with no special tokens added; literals of special tokens in `text`
    /// are tokenized as ordinary characters, while non-special added tokens (`<loc0000>`,
    /// `<seg000>`) are still recognised.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        // The tokenizer file is the model owner's, but the text is a caller's: a pre-tokenizer
        // regex that hits Oniguruma's backtracking limit panics inside `tokenizers`, and that
        // must reach the caller as an error about this prompt, not as an engine panic.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.encode(text, false)))
            .map_err(|panic| {
                Error::invalid(
                    "prompt",
                    format!(
                        "the tokenizer failed on this text ({}); its pre-tokenizer pattern may \
                         backtrack too much on it",
                        panic_message(panic.as_ref())
                    ),
                )
            })?;
        let enc = encoded.map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt ids of spec §3.2: `[image_token_id]×num_image_tokens`, `bos_id`, then the ids
    /// of `prefix + "\n"` (tokenized jointly, as the HF processor does). No second `<bos>`, no
    /// `<eos>`. An empty prefix is allowed.
    pub fn build_prompt(
        &self,
        prefix: &str,
        num_image_tokens: usize,
        image_token_id: u32,
        bos_id: u32,
    ) -> Result<Vec<u32>> {
        if num_image_tokens == 0 {
            return Err(Error::invalid("num_image_tokens", "must be at least 1"));
        }
        for (name, id) in [("image_token_id", image_token_id), ("bos_id", bos_id)] {
            if self.inner.id_to_token(id).is_none() {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{id} is not in the tokenizer ({} entries)",
                        self.vocab_size()
                    ),
                ));
            }
        }
        let text = self.encode_text(&format!("{prefix}\n"))?;
        let mut ids = Vec::with_capacity(num_image_tokens + 1 + text.len());
        ids.resize(num_image_tokens, image_token_id);
        ids.push(bos_id);
        ids.extend_from_slice(&text);
        Ok(ids)
    }

    /// [`build_prompt`](Self::build_prompt) with the image-token count and ids of `config`.
    /// A prefix too long to leave room for one new token in the model's context is refused
    /// before it is tokenized, so a huge prompt costs a character count, not a tokenization.
    pub fn build_prompt_for(&self, config: &Config, prefix: &str) -> Result<Vec<u32>> {
        let room = config
            .text
            .max_position_embeddings
            .saturating_sub(config.num_image_tokens() + 2); // <bos>, and one new token
        self.bound.check(prefix, room)?;
        self.build_prompt(
            prefix,
            config.num_image_tokens(),
            config.image_token_id,
            config.bos_token_id,
        )
    }

    /// Text of `ids` with special tokens (`<bos>`, `<eos>`, `<pad>`, `<image>`) skipped;
    /// `<loc…>`/`<seg…>` are kept. Equal to the concatenated output of a [`TextStream`].
    /// Invalid UTF-8 from byte pieces becomes U+FFFD per invalid sequence (like
    /// `String::from_utf8_lossy`), not per byte as in `tokenizers`' own decode.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut stream = self.stream();
        let mut text = String::new();
        for &id in ids {
            text.push_str(&stream.push(id)?);
        }
        text.push_str(&stream.finish());
        Ok(text)
    }

    /// A streaming detokeniser over this tokenizer.
    pub fn stream(&self) -> TextStream {
        TextStream::new(self)
    }

    /// Id of a token (vocabulary piece or added token), if present.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token with this id, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included (257153 for PaliGemma).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is a special token (skipped when decoding).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// The underlying `tokenizers` tokenizer (configured to treat special-token literals in
    /// text as plain text, without truncation or padding).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Appends the bytes token `id` contributes to decoded text.
    pub(crate) fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        // Unknown ids (e.g. the embedding's padding rows 257153…) vanish, as in `tokenizers`.
        let Some(token) = self.inner.id_to_token(id) else {
            return Ok(());
        };
        if self.inner.get_added_vocabulary().is_special_token(&token) {
            return Ok(());
        }
        if self.byte_fallback {
            if let Some(byte) = byte_piece(&token) {
                out.push(byte);
                return Ok(());
            }
        }
        let text = self
            .inner
            .decode(&[id], true)
            .map_err(|e| Error::Tokenizer(format!("cannot decode token {id}: {e}")))?;
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// The text of a caught panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
}

/// The byte of a `<0xHH>` piece, recognised exactly as `tokenizers`' ByteFallback decoder does.
fn byte_piece(token: &str) -> Option<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        u8::from_str_radix(token.get(3..5)?, 16).ok()
    } else {
        None
    }
}
