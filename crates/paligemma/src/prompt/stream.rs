//! Streaming detokenisation that never splits a UTF-8 character.
//!
//! Gemma's decoder works token by token (`▁` → space, `<0xHH>` → byte, then concatenation; no
//! dummy-prefix space to strip), so the stream keeps the undecoded bytes of an incomplete
//! character and emits everything before them. `PromptTokenizer::decode` runs the same stream,
//! so the pieces always add up to the full decode.

use super::PromptTokenizer;
use crate::error::Result;

/// Turns generated ids into text as they arrive; see [`PromptTokenizer::stream`].
#[derive(Debug, Clone)]
pub struct TextStream {
    tokenizer: PromptTokenizer,
    /// Bytes of an incomplete character (at most 3).
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new(tokenizer: &PromptTokenizer) -> Self {
        Self {
            tokenizer: tokenizer.clone(),
            pending: Vec::new(),
        }
    }

    /// Adds one id and returns the text it completes, possibly empty (a special token, or a
    /// byte piece in the middle of a multi-byte character).
    pub fn push(&mut self, token_id: u32) -> Result<String> {
        self.tokenizer.append_piece(token_id, &mut self.pending)?;
        Ok(take_complete(&mut self.pending))
    }

    /// Returns what is still held (an unfinished character, as U+FFFD) and resets the stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Whether an incomplete character is being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Drains and returns the longest prefix of `pending` that is decided: valid characters, and
/// U+FFFD for each invalid sequence (as `String::from_utf8_lossy` would). Leaves a trailing
/// sequence that may still become a valid character.
fn take_complete(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < pending.len() {
        let rest = &pending[start..];
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if let Ok(s) = std::str::from_utf8(&rest[..valid]) {
                    out.push_str(s);
                }
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start += valid + bad;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}
