//! Refusing prompts that cannot fit the context before tokenizing them.
//!
//! Tokenizing costs time and memory in proportion to the text (10⁷ CJK characters took 21 s and
//! 4 GB), so a long prompt has to be refused from its length alone. Every token covers at least
//! one character of the normalized text and at most the longest vocabulary entry, `L`
//! characters (31 for Gemma: a run of spaces, newlines or tabs). A text of `n` characters
//! therefore becomes at least `⌈n / L⌉` tokens, and one longer than `room · L` characters can
//! never fit in `room` positions.
//!
//! That holds for the characters after normalization. Gemma's normalizer only replaces `' '`
//! with `'▁'`, one character for one. A normalizer that can shorten text (Unicode composition,
//! stripping, a `Replace` with a shorter result) gets [`SHRINK_SLACK`] times the allowance:
//! the check then still refuses the absurd without refusing anything plausible.

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Allowance factor for normalizers that may shorten the text.
const SHRINK_SLACK: usize = 4;

/// The longest prompt (in characters) that could fit in a given number of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PromptBound {
    /// Characters per position allowed: `L`, times [`SHRINK_SLACK`] if the normalizer may
    /// shorten text.
    chars_per_position: usize,
}

impl PromptBound {
    pub(crate) fn of(tok: &Tokenizer) -> Self {
        let longest = tok
            .get_vocab(true)
            .keys()
            .map(|piece| piece.chars().count())
            .max()
            .unwrap_or(1)
            .max(1);
        let may_shrink = tok
            .get_normalizer()
            .and_then(|n| serde_json::to_value(n).ok())
            .is_none_or(|n| may_shorten(&n));
        let may_shrink = may_shrink && tok.get_normalizer().is_some();
        PromptBound { chars_per_position: if may_shrink { longest * SHRINK_SLACK } else { longest } }
    }

    /// Largest prompt, in characters, that is tokenized at all when `room` positions are free.
    pub(crate) fn max_chars(&self, room: usize) -> usize {
        room.saturating_mul(self.chars_per_position)
    }

    /// Refuses `prefix` when it cannot fit in `room` positions, whatever it tokenizes to.
    /// Counting stops as soon as the answer is known, so a 10⁸-character prompt costs the
    /// count of `max_chars + 1` characters.
    pub(crate) fn check(&self, prefix: &str, room: usize) -> Result<()> {
        let max = self.max_chars(room);
        // One character per byte at most, so a short enough UTF-8 length settles it at once.
        if prefix.len() <= max {
            return Ok(());
        }
        if prefix.chars().nth(max).is_none() {
            return Ok(());
        }
        Err(Error::invalid(
            "prompt",
            format!(
                "{} bytes of text cannot fit in the model's context: at most {room} positions are \
                 left after the image tokens, and a prompt longer than {max} characters needs more \
                 than that",
                prefix.len()
            ),
        ))
    }
}

/// Whether a serialized `tokenizers` normalizer may make a text shorter in characters.
fn may_shorten(n: &Value) -> bool {
    match n.get("type").and_then(Value::as_str) {
        Some("Sequence") => n
            .get("normalizers")
            .and_then(Value::as_array)
            .is_none_or(|all| all.iter().any(may_shorten)),
        Some("Replace") => {
            let pattern = n.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
            let content = n.get("content").and_then(Value::as_str).unwrap_or("");
            // A regex pattern can match any length; a fixed one shortens if its replacement does.
            pattern.is_none_or(|p| content.chars().count() < p.chars().count())
        }
        Some("Prepend" | "NFD" | "NFKD" | "Lowercase") => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemma_normalizer_keeps_length_others_may_not() {
        assert!(!may_shorten(&json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})));
        assert!(may_shorten(&json!({"type": "Replace", "pattern": {"String": "  "}, "content": " "})));
        assert!(may_shorten(&json!({"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "})));
        assert!(may_shorten(&json!({"type": "NFC"})));
        assert!(may_shorten(&json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Strip"}]})));
        assert!(!may_shorten(&json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "NFD"}]})));
    }

    #[test]
    fn check_counts_characters_not_bytes() {
        let bound = PromptBound { chars_per_position: 2 };
        assert_eq!(bound.max_chars(3), 6);
        assert!(bound.check("abcdef", 3).is_ok());
        // Six 3-byte characters: 18 bytes, but only 6 characters.
        assert!(bound.check("日本語日本語", 3).is_ok());
        let err = bound.check("abcdefg", 3).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
        assert!(err.to_string().contains("prompt"), "{err}");
        assert!(bound.check(&"語".repeat(7), 3).is_err());
    }
}
