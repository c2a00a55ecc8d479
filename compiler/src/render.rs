//! Renders [`Diagnostic`]s with codespan-reporting: `file:line:col`, code, labels, hints and
//! the block-expansion trace.

use crate::diag::{Diagnostic, Severity};
use crate::span::Sources;
use codespan_reporting::diagnostic as cr;
use codespan_reporting::term;

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
    for f in d.trace.iter().rev() {
        let (line, col) = sources.line_col(f.span.file, f.span.start);
        notes.push(format!(
            "in block `{}` ({}), called at {}:{}:{}",
            f.block,
            if f.path.is_empty() { "<root>" } else { &f.path },
            sources.name(f.span.file),
            line,
            col
        ));
    }
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

/// Renders diagnostics to stderr, with colors when stderr is a terminal.
pub fn emit_stderr(diags: &[Diagnostic], sources: &Sources) {
    use term::termcolor::{ColorChoice, StandardStream};
    let writer = StandardStream::stderr(ColorChoice::Auto);
    let config = term::Config::default();
    let mut lock = writer.lock();
    for d in diags {
        let _ = term::emit_to_write_style(&mut lock, &config, sources, &to_codespan(d, sources));
    }
}
