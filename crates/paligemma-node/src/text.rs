//! Generated ids → text while streaming, and stop strings.
//!
//! A model handle optionally owns a tokenizer, loaded from `<modelDir>/tokenizer.json` when that
//! file exists. Each request gets a [`TextState`] that turns every new id into the text it
//! completes (never splitting a UTF-8 character) and holds back text that may still become a
//! stop string, so no chunk ever shows part of one.

use std::path::Path;

use paligemma::prompt::{PromptTokenizer, StopEvent, StopMatcher, TextStream};
use paligemma::Config;

use crate::error::NativeFailure;

pub(crate) type Tokenizer = PromptTokenizer;

/// Loads `<dir>/tokenizer.json` when present and checks it against the model's config (a
/// mismatched tokenizer would silently produce wrong text, so it fails the load). Only a
/// missing entry means "no tokenizer": a folder, a dangling link (a Hugging Face cache snapshot
/// whose blob is gone) or an unreadable file of that name fails the load, naming the file.
pub(crate) fn load(dir: &Path, config: &Config) -> Result<Option<Tokenizer>, NativeFailure> {
    let path = dir.join("tokenizer.json");
    if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(None);
    }
    let core = |e: paligemma::Error| NativeFailure::from_core(&e, false);
    let tokenizer = PromptTokenizer::from_file(&path).map_err(core)?;
    tokenizer.check_against(config).map_err(core)?;
    Ok(Some(tokenizer))
}

/// What one new token contributed.
pub(crate) struct Push {
    /// Newly completed text; empty while a character or a possible stop string is still open.
    pub text: String,
    /// A stop string completed: generation ends, and the stop text is not part of the output.
    pub stop: bool,
}

/// Per-request detokenisation state.
pub(crate) struct TextState {
    stream: Option<TextStream>,
    stops: StopMatcher,
}

impl TextState {
    pub fn new(tokenizer: Option<&Tokenizer>, stop: &[String]) -> Result<Self, NativeFailure> {
        if tokenizer.is_none() && !stop.is_empty() {
            return Err(NativeFailure::invalid(
                "stop",
                "stop strings need the model's tokenizer, and this model folder has no tokenizer.json; \
                 omit `stop` or add the tokenizer",
            ));
        }
        let stops = StopMatcher::new(stop.iter().cloned()).map_err(|e| NativeFailure::from_core(&e, false))?;
        Ok(TextState { stream: tokenizer.map(PromptTokenizer::stream), stops })
    }

    pub fn push(&mut self, id: u32) -> Result<Push, NativeFailure> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Push { text: String::new(), stop: false });
        };
        let piece = stream.push(id).map_err(|e| NativeFailure::from_core(&e, false))?;
        Ok(match self.stops.push(&piece) {
            StopEvent::Text(text) => Push { text, stop: false },
            StopEvent::Stop { text, .. } => Push { text, stop: true },
        })
    }

    /// Text held back until the end: an unfinished character (as U+FFFD) and a partial
    /// stop-string match that never completed. Call only when no stop string matched.
    pub fn finish(&mut self) -> String {
        let Some(stream) = self.stream.as_mut() else { return String::new() };
        let rest = stream.finish();
        match self.stops.push(&rest) {
            StopEvent::Text(text) => text + &self.stops.finish(),
            StopEvent::Stop { text, .. } => text,
        }
    }
}
