//! A span-keeping YAML tree, read with serde-saphyr. The spec reader walks this tree so that
//! every value, key and list item keeps the byte span it came from.

use crate::diag::Diagnostic;
use crate::span::{FileId, Span};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML value with its span.
#[derive(Clone, Debug)]
pub struct Node {
    /// Where the value is in its file.
    pub span: Span,
    /// The value.
    pub kind: Kind,
}

/// The value of a YAML [`Node`]. Mappings keep their order.
#[derive(Clone, Debug)]
pub enum Kind {
    /// `~` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The string value, if this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A short name of the value's type for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "nothing",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
    /// The scalar as expression source text (numbers and booleans written back).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(i) => Some(i.to_string()),
            Kind::Float(f) => Some(format!("{f:?}")),
            Kind::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Raw node as deserialized: spans still in serde-saphyr's form.
struct RawNode(Spanned<RawKind>);

enum RawKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<RawNode>),
    Map(Vec<(RawNode, RawNode)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RawNode(Spanned::<RawKind>::deserialize(d)?))
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = RawKind;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<RawKind, E> {
        Ok(RawKind::Null)
    }
    fn visit_none<E>(self) -> Result<RawKind, E> {
        Ok(RawKind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawKind, D::Error> {
        d.deserialize_any(KindVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawKind, E> {
        Ok(RawKind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawKind, E> {
        Ok(RawKind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKind, E> {
        i64::try_from(v).map(RawKind::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawKind, E> {
        i64::try_from(v).map(RawKind::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawKind, E> {
        i64::try_from(v).map(RawKind::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawKind, E> {
        Ok(RawKind::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawKind, E> {
        Ok(RawKind::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawKind, E> {
        Ok(RawKind::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawKind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = a.next_element::<RawNode>()? {
            items.push(item);
        }
        Ok(RawKind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawKind, A::Error> {
        let mut items = Vec::new();
        while let Some(k) = a.next_key::<RawNode>()? {
            let v = a.next_value::<RawNode>()?;
            items.push((k, v));
        }
        Ok(RawKind::Map(items))
    }
}

impl<'de> Deserialize<'de> for RawKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

/// Largest spec file accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4 << 20;

/// Parses YAML text into a [`Node`] tree; a syntax error becomes a diagnostic at its position.
pub fn parse(file: FileId, text: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::error("E0001", Span::new(file, 0, 0), format!(
            "spec file is {} bytes; the limit is {} bytes",
            text.len(),
            MAX_SOURCE_BYTES
        )));
    }
    if text.trim().is_empty() {
        return Err(Diagnostic::error("E0002", Span::new(file, 0, 0), "the spec file is empty")
            .hint("a spec starts with `name:`, `input:` and `graph:`"));
    }
    let raw = std::panic::catch_unwind(|| serde_saphyr::from_str::<RawNode>(text));
    match raw {
        Ok(Ok(raw)) => {
            let node = convert(file, text, raw);
            if matches!(node.kind, Kind::Null) {
                // Only comments (or `~`): point at the first non-blank line.
                let start = text.len() - text.trim_start().len();
                let line_end = text[start..].find('\n').map(|i| start + i).unwrap_or(text.len());
                let end = start + text[start..line_end].trim_end().len();
                return Err(Diagnostic::error("E0002", Span::new(file, start, end), "the spec file has no keys (only comments)")
                    .label("nothing but comments")
                    .hint("a spec starts with `name:`, `input:` and `graph:`"));
            }
            Ok(node)
        }
        Ok(Err(e)) => {
            let span = e
                .location()
                .map(|loc| location_span(file, text, &loc))
                .unwrap_or(Span::new(file, 0, 0));
            let msg = e.without_snippet().to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
            Err(Diagnostic::error("E0001", span, format!("invalid YAML: {first}")).label("here"))
        }
        Err(_) => Err(Diagnostic::error("E0001", Span::new(file, 0, 0), "invalid YAML: the reader failed")),
    }
}

fn location_span(file: FileId, text: &str, loc: &serde_saphyr::Location) -> Span {
    let s = loc.span();
    if let (Some(off), Some(len)) = (s.byte_offset(), s.byte_len()) {
        return Span::new(file, off as usize, off as usize + len as usize);
    }
    // Fall back to line/column.
    let (line, col) = (loc.line() as usize, loc.column() as usize);
    if line == 0 {
        return Span::new(file, 0, 0);
    }
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let c = l.char_indices().nth(col.saturating_sub(1)).map(|(b, _)| b).unwrap_or(l.len());
            return Span::new(file, offset + c, offset + c + 1);
        }
        offset += l.len();
    }
    Span::new(file, text.len(), text.len())
}

fn convert(file: FileId, text: &str, raw: RawNode) -> Node {
    let mut span = location_span(file, text, &raw.0.referenced);
    let kind = match raw.0.value {
        RawKind::Null => Kind::Null,
        RawKind::Bool(b) => {
            // YAML 1.2 booleans only: `y`, `n`, `yes`, `no`, `on`, `off` stay strings (variant `n`).
            let src = text.get(span.range()).unwrap_or("").trim();
            if matches!(src, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") || src.is_empty() {
                Kind::Bool(b)
            } else {
                Kind::Str(src.trim_matches(|c| c == '"' || c == '\'').to_string())
            }
        }
        RawKind::Int(i) => Kind::Int(i),
        RawKind::Float(f) => Kind::Float(f),
        RawKind::Str(s) => {
            span = trim_quotes(text, span);
            Kind::Str(s)
        }
        RawKind::Seq(items) => {
            let items: Vec<Node> = items.into_iter().map(|n| convert(file, text, n)).collect();
            span = container_span(text, span, items.first().map(|n| n.span), items.last().map(|n| n.span));
            Kind::Seq(items)
        }
        RawKind::Map(items) => {
            let items: Vec<(Node, Node)> = items.into_iter().map(|(k, v)| (convert(file, text, k), convert(file, text, v))).collect();
            span = container_span(text, span, items.first().map(|e| e.0.span), items.last().map(|e| e.1.span));
            Kind::Map(items)
        }
    };
    Node { span, kind }
}

/// The reader gives collections an empty span at their start. A flow collection (`[..]`,
/// `{..}`) gets its whole text up to the closing bracket; a block list its first `-`, a block
/// mapping its first key, so that errors about it underline one line.
fn container_span(text: &str, span: Span, first: Option<Span>, last: Option<Span>) -> Span {
    let start = span.start as usize;
    if span.end as usize > start + 1 {
        return span;
    }
    match text.as_bytes().get(start) {
        Some(b'-') => Span::new(span.file, start, start + 1),
        Some(&open @ (b'[' | b'{')) => {
            let close = if open == b'[' { b']' } else { b'}' };
            let from = last.map(|l| l.end as usize).unwrap_or(start + 1).max(start + 1);
            let end = text.get(from..).and_then(|t| t.find(close as char)).map(|i| from + i + 1).unwrap_or(from);
            Span::new(span.file, start, end.min(text.len()))
        }
        _ => match first {
            Some(f) if f.end as usize > start && span.start == span.end => Span::new(span.file, start, f.end as usize),
            _ => span,
        },
    }
}

/// For a quoted scalar the span covers the quotes; expressions are offset inside it.
fn trim_quotes(text: &str, span: Span) -> Span {
    let r = span.range();
    if let Some(s) = text.get(r.clone()) {
        if s.len() >= 2 && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\''))) {
            return Span::new(span.file, r.start + 1, r.end - 1);
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_and_order() {
        let text = "name: x\ngraph:\n  - conv(3)\n  - b: \"relu\"\n";
        let n = parse(0, text).unwrap();
        let Kind::Map(items) = &n.kind else { panic!() };
        assert_eq!(items[0].0.as_str(), Some("name"));
        let Kind::Seq(seq) = &items[1].1.kind else { panic!() };
        assert_eq!(&text[seq[0].span.range()], "conv(3)");
        let Kind::Map(m) = &seq[1].kind else { panic!() };
        assert_eq!(&text[m[0].1.span.range()], "relu");
    }

    #[test]
    fn yaml11_booleans_stay_strings() {
        let n = parse(0, "n: {depth: 1}\ny: no\nz: true\n").unwrap();
        let Kind::Map(items) = &n.kind else { panic!() };
        assert_eq!(items[0].0.as_str(), Some("n"));
        assert_eq!(items[1].1.as_str(), Some("no"));
        assert!(matches!(items[2].1.kind, Kind::Bool(true)));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse(0, "a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(e.code, "E0001");
    }
}
