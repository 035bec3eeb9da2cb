//! Stop strings over streamed text.
//!
//! Text that might be the start of a stop string is held back until the next pieces decide it,
//! so a caller that forwards only what [`StopMatcher::push`] returns never shows any part of a
//! stop string.

use crate::error::{Error, Result};

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopEvent {
    /// Text that is safe to emit; generation goes on.
    Text(String),
    /// The stop string `stop_strings()[index]` completed. `text` is the not-yet-emitted text
    /// before it; the stop string and anything after it are dropped.
    Stop { text: String, index: usize },
}

/// Finds the first stop string in a stream of text pieces.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (none is fine: everything passes through). Empty strings are
    /// rejected: they would match before any text.
    pub fn new<I, S>(stops: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops: Vec<String> = stops.into_iter().map(Into::into).collect();
        if let Some(i) = stops.iter().position(String::is_empty) {
            return Err(Error::invalid("stop", format!("stop string {i} is empty")));
        }
        Ok(Self {
            stops,
            held: String::new(),
            stopped: false,
        })
    }

    pub fn stop_strings(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string has matched; later pushes return empty text.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly streamed text.
    pub fn push(&mut self, text: &str) -> StopEvent {
        if self.stopped {
            return StopEvent::Text(String::new());
        }
        let mut buffer = std::mem::take(&mut self.held);
        buffer.push_str(text);
        if let Some((start, index)) = self.first_match(&buffer) {
            self.stopped = true;
            buffer.truncate(start);
            return StopEvent::Stop {
                text: buffer,
                index,
            };
        }
        let keep = self.undecided_suffix(&buffer);
        self.held = buffer.split_off(keep);
        StopEvent::Text(buffer)
    }

    /// Returns the held-back text (it did not become a stop string) and resets the matcher.
    pub fn finish(&mut self) -> String {
        self.stopped = false;
        std::mem::take(&mut self.held)
    }

    /// The match that completes first, i.e. ends earliest (ties: the longest). This is the one a
    /// character-by-character stream would hit first, so the result does not depend on how the
    /// text was split into pieces.
    fn first_match(&self, buffer: &str) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (index, stop) in self.stops.iter().enumerate() {
            if let Some(start) = buffer.find(stop.as_str()) {
                let end = start + stop.len();
                if best.is_none_or(|(e, s, _)| (end, start) < (e, s)) {
                    best = Some((end, start, index));
                }
            }
        }
        best.map(|(_, start, index)| (start, index))
    }

    /// Byte offset of the longest suffix of `buffer` that is a proper prefix of a stop string.
    fn undecided_suffix(&self, buffer: &str) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lower = buffer.len().saturating_sub(longest.saturating_sub(1));
        buffer
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= lower)
            .find(|&i| {
                let tail = &buffer[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(buffer.len())
    }
}
