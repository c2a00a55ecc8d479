//! Diagnostics as plain data: severity, code, message, labelled spans, hints and the trace of
//! block expansions that led to the error. Rendering lives in [`crate::render`].

use crate::span::Span;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Severity {
    /// The spec is wrong; compilation fails.
    Error,
    /// Suspicious but accepted.
    Warning,
}

/// A span with a short explanation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What about it ("this input has 64 channels").
    pub message: String,
}

/// One step of the expansion trace: "in block `bottleneck` (layer3.2)".
#[derive(Clone, Debug, serde::Serialize)]
pub struct Frame {
    /// Block name.
    pub block: String,
    /// Instance path of the expansion.
    pub path: String,
    /// The call site.
    pub span: Span,
}

/// A compiler message about the spec.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code, e.g. `E0301`.
    pub code: &'static str,
    /// One line: what was expected and what was found.
    pub message: String,
    /// The main span first, then secondary ones.
    pub labels: Vec<Label>,
    /// Facts that explain the message (examples, lists), rendered before the hints; boxed
    /// because few diagnostics have any (keeps `Result<_, Diagnostic>` small).
    pub notes: Option<Box<Vec<String>>>,
    /// Suggestions such as "did you mean `stride`?".
    pub hints: Vec<String>,
    /// Block expansions from the outermost call inwards.
    pub trace: Box<[Frame]>,
}

impl Diagnostic {
    /// A new error with a primary label.
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: vec![Label { span, message: String::new() }],
            notes: None,
            hints: Vec::new(),
            trace: Box::default(),
        }
    }
    /// Sets the primary label's text.
    pub fn label(mut self, message: impl Into<String>) -> Self {
        self.labels[0].message = message.into();
        self
    }
    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label { span, message: message.into() });
        self
    }
    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.get_or_insert_with(Default::default).push(note.into());
        self
    }
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
    /// Adds a hint only when there is one.
    pub fn maybe_hint(self, hint: Option<String>) -> Self {
        match hint {
            Some(h) => self.hint(h),
            None => self,
        }
    }
    /// The primary span.
    pub fn span(&self) -> Span {
        self.labels[0].span
    }
}

/// "did you mean `x`?" for the closest candidate within a small edit distance.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<((usize, usize), &str)> = None;
    for c in candidates {
        let d = edit_distance(word, c);
        // `concatenate` -> `concat`, `global_avg` -> `global_avgpool`: one word extends the other.
        let extends = word.len().min(c.len()) >= 3 && word.len() != c.len() && (word.starts_with(c) || c.starts_with(word));
        let e = if extends { d.min(1) } else { d };
        // Rank by the effective distance, then by the plain edit distance.
        if e <= (word.len().max(3) / 3).max(1) && best.is_none_or(|(bd, _)| (e, d) < bd) {
            best = Some(((e, d), c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters (`cnov` -> `conv`, `widht` -> `width`) each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_swaps_and_extensions() {
        assert_eq!(did_you_mean("cnov", ["conv", "bn"]).as_deref(), Some("did you mean `conv`?"));
        assert_eq!(did_you_mean("widht", ["width"]).as_deref(), Some("did you mean `width`?"));
        assert_eq!(did_you_mean("concatenate", ["concat", "add", "mul"]).as_deref(), Some("did you mean `concat`?"));
        assert_eq!(did_you_mean("stide", ["s", "stride"]).as_deref(), Some("did you mean `stride`?"));
        assert_eq!(did_you_mean("relu6x", ["relu", "relu6"]).as_deref(), Some("did you mean `relu6`?"));
        assert_eq!(did_you_mean("zzz", ["conv"]), None);
    }
}
