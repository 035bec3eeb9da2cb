//! Task prompt prefixes (spec §3.4). The `"\n"` separator is added by `build_prompt`, not here.
//! The TypeScript API mirrors these strings exactly.

/// A PaliGemma task and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `caption {lang}`: a short caption.
    Caption { lang: String },
    /// `describe {lang}`: a longer description.
    Describe { lang: String },
    /// `answer {lang} {question}`: visual question answering.
    Answer { lang: String, question: String },
    /// `ocr`: the text in the image.
    Ocr,
    /// `detect a ; b`: boxes as `<loc>` tokens followed by the label.
    Detect { objects: Vec<String> },
    /// `segment a ; b`: boxes plus `<seg>` mask tokens.
    Segment { objects: Vec<String> },
}

impl Task {
    /// The prompt prefix, e.g. `caption en` or `detect cat ; dog`.
    pub fn prefix(&self) -> String {
        match self {
            Task::Caption { lang } => format!("caption {lang}"),
            Task::Describe { lang } => format!("describe {lang}"),
            Task::Answer { lang, question } => format!("answer {lang} {question}"),
            Task::Ocr => "ocr".to_string(),
            Task::Detect { objects } => format!("detect {}", objects.join(" ; ")),
            Task::Segment { objects } => format!("segment {}", objects.join(" ; ")),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix())
    }
}
