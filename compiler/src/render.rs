//! Renders [`Diagnostic`]s with codespan-reporting: `file:line:col`, code, labels, hints and
//! the block-expansion trace.

use crate::diag::{Diagnostic, Severity};
use crate::span::Sources;
use codespan_reporting::diagnostic as cr;
use codespan_reporting::term;

/// Most trace frames rendered in full.
const MAX_TRACE: usize = 8;

/// An instance path for a trace note; very long ones (deep recursion) keep their two ends.
fn short_path(path: &str) -> String {
    if path.is_empty() {
        return "<root>".into();
    }
    let parts: Vec<&str> = path.split('.').collect();
    if parts.len() <= 12 {
        return path.to_string();
    }
    format!("{}.<{} more>.{}", parts[..4].join("."), parts.len() - 8, parts[parts.len() - 4..].join("."))
}

fn to_codespan(d: &Diagnostic, sources: &Sources) -> cr::Diagnostic<usize> {
    let sev = match d.severity {
        Severity::Error => cr::Severity::Error,
        Severity::Warning => cr::Severity::Warning,
    };
    let mut labels = Vec::new();
    for (i, l) in d.labels.iter().enumerate() {
        let label = if i == 0 {
            cr::Label::primary(l.span.file, l.span.range())
        } else {
            cr::Label::secondary(l.span.file, l.span.range())
        };
        labels.push(label.with_message(&l.message));
    }
    let mut notes: Vec<String> = Vec::new();
    // Innermost frames first; a very deep trace (a recursive block) keeps its innermost and
    // outermost frames and elides the middle.
    let n = d.trace.len();
    for (k, f) in d.trace.iter().rev().enumerate() {
        if n > MAX_TRACE && k >= MAX_TRACE / 2 && k < n - MAX_TRACE / 2 {
            if k == MAX_TRACE / 2 {
                notes.push(format!("... {} more block expansions ...", n - 2 * (MAX_TRACE / 2)));
            }
            continue;
        }
        let (line, col) = sources.line_col(f.span.file, f.span.start);
        notes.push(format!(
            "in block `{}` ({}), called at {}:{}:{}",
            f.block,
            short_path(&f.path),
            sources.name(f.span.file),
            line,
            col
        ));
    }
    notes.extend(d.notes.iter().flat_map(|n| n.iter().cloned()));
    for h in &d.hints {
        notes.push(format!("help: {h}"));
    }
    cr::Diagnostic::new(sev).with_code(d.code).with_message(&d.message).with_labels(labels).with_notes(notes)
}

/// Renders diagnostics as plain text (no colors), as printed on stderr and snapshotted.
pub fn render_plain(diags: &[Diagnostic], sources: &Sources) -> String {
    let config = term::Config::default();
    let mut out = String::new();
    for d in diags {
        let _ = term::emit_to_string(&mut out, &config, sources, &to_codespan(d, sources));
    }
    out
}

/// Renders diagnostics to stderr, in colour when `color` (the CLI decides: `--color`,
/// `NO_COLOR`, whether stderr is a terminal).
pub fn emit_stderr(diags: &[Diagnostic], sources: &Sources, color: bool) {
    use term::termcolor::{ColorChoice, StandardStream};
    let writer = StandardStream::stderr(if color { ColorChoice::AlwaysAnsi } else { ColorChoice::Never });
    let config = term::Config::default();
    let mut lock = writer.lock();
    for d in diags {
        let _ = term::emit_to_write_style(&mut lock, &config, sources, &to_codespan(d, sources));
    }
}
