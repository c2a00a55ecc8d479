//! The darknet `.cfg` format as darknet's `read_cfg` reads it: `[section]` lines, `key=value`
//! options (all whitespace removed, as darknet's `strip` does), `#` and `;` comment lines.
//! Every section and option keeps its byte span for diagnostics.

use crate::diag::Diagnostic;
use crate::span::{FileId, Span};

/// Largest size, count or index an option may hold.
const MAX_SIZE: usize = 1 << 20;

/// One `key=value` line.
pub(super) struct Opt {
    pub key: String,
    pub value: String,
    pub value_span: Span,
}

/// One `[type]` section and its options, in file order.
pub(super) struct Section {
    /// The type between the brackets, e.g. `convolutional`.
    pub kind: String,
    /// The `[type]` header.
    pub span: Span,
    pub opts: Vec<Opt>,
}

/// Splits the cfg text into sections.
pub(super) fn parse(file: FileId, text: &str) -> Result<Vec<Section>, Diagnostic> {
    let mut sections: Vec<Section> = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let at = start;
        start += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let lead = body.len() - body.trim_start().len();
        let trimmed = body.trim();
        let span = Span::new(file, at + lead, at + lead + trimmed.len());
        match trimmed.chars().next() {
            None | Some('#') | Some(';') => continue,
            Some('[') => {
                let Some(kind) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
                    return Err(Diagnostic::error("E0501", span, "a section header must be `[type]`").label("no closing `]`"));
                };
                sections.push(Section { kind: strip(kind), span, opts: Vec::new() });
            }
            Some(_) => {
                let Some(eq) = body.find('=') else {
                    return Err(Diagnostic::error("E0501", span, format!("cannot read `{trimmed}`: an option is `key=value`")).label("no `=`"));
                };
                let Some(section) = sections.last_mut() else {
                    return Err(Diagnostic::error("E0501", span, "an option before the first section").hint("a cfg starts with `[net]`"));
                };
                let (k, v) = (&body[..eq], &body[eq + 1..]);
                let v_lead = v.len() - v.trim_start().len();
                let value_span = Span::new(file, at + eq + 1 + v_lead, at + eq + 1 + v_lead + v.trim().len());
                // Darknet reads numbers with atoi/atof, which stop at an inline `# comment`.
                let v = v.split('#').next().unwrap_or_default();
                section.opts.push(Opt { key: strip(k), value: strip(v), value_span });
            }
        }
    }
    Ok(sections)
}

/// Darknet's `strip`: every space, tab and line break removed.
fn strip(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

impl Section {
    /// The first option named `key` (darknet's `option_find` takes the first).
    pub fn get(&self, key: &str) -> Option<&Opt> {
        self.opts.iter().find(|o| o.key == key)
    }

    /// An integer option, or `default`.
    pub fn int(&self, key: &str, default: i64) -> Result<i64, Diagnostic> {
        match self.get(key) {
            None => Ok(default),
            Some(o) => o.value.parse().map_err(|_| o.invalid("an integer")),
        }
    }

    /// A non-negative integer option of at least `min`, or `default`.
    pub fn size(&self, key: &str, default: usize, min: usize) -> Result<usize, Diagnostic> {
        let v = self.int(key, default as i64)?;
        match usize::try_from(v) {
            Ok(v) if v >= min && v <= MAX_SIZE => Ok(v),
            _ => Err(Diagnostic::error("E0502", self.blame(key), format!("`{key}={v}` is out of range"))
                .label(format!("must be between {min} and {MAX_SIZE}"))),
        }
    }

    /// A number option, or `default`.
    pub fn float(&self, key: &str, default: f64) -> Result<f64, Diagnostic> {
        match self.get(key) {
            None => Ok(default),
            Some(o) => o.value.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| o.invalid("a number")),
        }
    }

    /// A comma-separated integer list, if present.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, Diagnostic> {
        let Some(o) = self.get(key) else { return Ok(None) };
        let parsed: Option<Vec<i64>> = o.value.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect();
        match parsed {
            Some(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(o.invalid("a comma-separated list of integers")),
        }
    }

    /// A text option, or `default`.
    pub fn text<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).map_or(default, |o| o.value.as_str())
    }

    /// The span to blame for `key`: its value, or the section header when it is absent.
    pub fn blame(&self, key: &str) -> Span {
        self.get(key).map_or(self.span, |o| o.value_span)
    }
}

impl Opt {
    fn invalid(&self, what: &str) -> Diagnostic {
        Diagnostic::error("E0502", self.value_span, format!("`{}` must be {what}, found `{}`", self.key, self.value)).label(format!("not {what}"))
    }
}
