//! SVG text of a [`Picture`]. Boxes, frames and edges are written as groups translated to their
//! place, with content relative to the group, so the viewer reuses the same markup.

use super::picture::{BoxShape, ClusterShape, LabelShape, Picture, Rect, Seg};
use super::style::{BoxText, Metrics, FONT_FAMILY};
use std::fmt::Write;

/// A number with at most one decimal (`12`, `12.5`).
pub fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Escapes text for XML content and attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `d` attribute of a path.
pub fn path_d(path: &[Seg]) -> String {
    let mut d = String::new();
    for s in path {
        let _ = match *s {
            Seg::Move(x, y) => write!(d, "M{},{}", num(x), num(y)),
            Seg::Line(x, y) => write!(d, "L{},{}", num(x), num(y)),
            Seg::Curve(a, b, c, e, x, y) => write!(d, "C{},{} {},{} {},{}", num(a), num(b), num(c), num(e), num(x), num(y)),
        };
    }
    d
}

/// Arrowhead marker and the styles shared by pictures and the viewer.
pub fn defs() -> String {
    "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,1 L10,5 L0,9 z\" fill=\"#4d5866\"/></marker></defs>".into()
}

/// How the text of a box is styled: inline attributes (standalone SVG), or classes that the
/// viewer's style sheet ([`class_styles`]) defines (a smaller page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Styling {
    /// Presentation attributes on every element.
    Inline,
    /// `class="..."` only.
    Classes,
}

/// Text styles: (class, font size, colour, bold) for box lines and shape labels.
fn text_styles(m: &Metrics) -> [(&'static str, f64, &'static str, bool); 4] {
    [("l1", m.name_size, "#1b2430", true), ("l2", m.text_size, "#2b3846", false), ("l3", m.text_size, "#687584", false), ("shape", m.label_size, "#3f6f9f", false)]
}

/// Box frame styles: (class, stroke, stroke width) for nodes and collapsed blocks.
const FRAME_STYLES: [(&str, &str, &str); 2] = [("bn", "#7d8a99", "1"), ("bb", "#4e6a8d", "1.8")];

/// CSS rules for [`Styling::Classes`].
pub fn class_styles(m: &Metrics) -> String {
    let mut s = String::new();
    for (class, size, color, bold) in text_styles(m) {
        let _ = writeln!(s, ".{class}{{font-size:{}px;fill:{color};{}}}", num(size), if bold { "font-weight:bold" } else { "" });
    }
    for (class, stroke, width) in FRAME_STYLES {
        let _ = writeln!(s, ".{class}{{stroke:{stroke};stroke-width:{width}}}");
    }
    s
}

fn text_el(out: &mut String, style: (&str, f64, &str, bool), x: f64, y: f64, text: &str, styling: Styling) {
    let (class, size, color, bold) = style;
    let _ = match styling {
        Styling::Classes => write!(out, "<text class=\"{class}\" x=\"{}\" y=\"{}\">{}</text>", num(x), num(y), esc(text)),
        Styling::Inline => write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"{color}\"{}>{}</text>",
            num(x),
            num(y),
            num(size),
            if bold { " font-weight=\"bold\"" } else { "" },
            esc(text)
        ),
    };
}

/// The content of a box group: frame, text lines, shape label; relative to its top-left.
pub fn box_content(t: &BoxText, label: Option<&LabelShape>, m: &Metrics, styling: Styling) -> String {
    let mut s = String::new();
    let (class, stroke, width) = FRAME_STYLES[t.block as usize];
    let _ = match styling {
        Styling::Classes => write!(s, "<rect class=\"{class}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"{}\"/>", num(t.w), num(t.h), t.fill),
        Styling::Inline => write!(s, "<rect width=\"{}\" height=\"{}\" rx=\"4\" fill=\"{}\" stroke=\"{stroke}\" stroke-width=\"{width}\"/>", num(t.w), num(t.h), t.fill),
    };
    let styles = text_styles(m);
    for (i, l) in t.lines.iter().enumerate() {
        let y = m.box_pad_y + (i as f64 + 1.0) * m.line_height - 3.0;
        let style = if l.strong { styles[0] } else if l.dim { styles[2] } else { styles[1] };
        text_el(&mut s, style, m.box_pad_x, y, &l.text, styling);
    }
    if let Some(l) = label {
        text_el(&mut s, styles[3], l.rect.x, l.rect.y + l.rect.h - 2.5, &l.text, styling);
    }
    s
}

/// A box as a translated group.
fn box_group(b: &BoxShape, m: &Metrics) -> String {
    let label = b.label.as_ref().map(|l| LabelShape { rect: Rect { x: l.rect.x - b.rect.x, y: l.rect.y - b.rect.y, ..l.rect }, text: l.text.clone() });
    format!("<g id=\"{}\" class=\"box\" transform=\"translate({},{})\">{}</g>\n", b.id, num(b.rect.x), num(b.rect.y), box_content(&b.text, label.as_ref(), m, Styling::Inline))
}

/// Fill of a frame by nesting level.
pub fn cluster_fill(level: usize) -> &'static str {
    ["#f7f9fc", "#f1f5fa", "#ebf0f7", "#e6ecf4"][level.saturating_sub(1) % 4]
}

/// A frame with its title.
fn cluster_group(c: &ClusterShape, m: &Metrics) -> String {
    format!(
        "<g id=\"c{}\" class=\"cluster\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{}\" stroke=\"#8a9bb0\" stroke-dasharray=\"5 3\"/><text x=\"{}\" y=\"{}\" font-size=\"{}\" font-weight=\"bold\" fill=\"#4a5a6e\">{}</text></g>\n",
        c.scope,
        num(c.rect.x),
        num(c.rect.y),
        num(c.rect.w),
        num(c.rect.h),
        cluster_fill(c.level),
        num(c.title_at.0),
        num(c.title_at.1 + m.name_size),
        num(m.name_size),
        esc(&c.title)
    )
}

/// The SVG document of a picture.
pub fn document(pic: &Picture, m: &Metrics) -> String {
    let (w, h) = (num(pic.width), num(pic.height));
    let mut s = String::with_capacity(1024 + 600 * pic.boxes.len());
    let _ = writeln!(s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"{FONT_FAMILY}\">");
    let _ = writeln!(s, "{}", defs());
    let _ = writeln!(s, "<rect width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>");
    let (title, tx, ty) = &pic.title;
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" font-size=\"{}\" font-weight=\"bold\" fill=\"#1b2430\">{}</text>", num(*tx), num(ty + m.name_size), num(m.name_size), esc(title));
    for c in &pic.clusters {
        s.push_str(&cluster_group(c, m));
    }
    for e in &pic.edges {
        let marker = if e.arrow { " marker-end=\"url(#arrow)\"" } else { "" };
        let _ = writeln!(s, "<path class=\"edge\" d=\"{}\" fill=\"none\" stroke=\"#4d5866\" stroke-width=\"1.1\"{marker}/>", path_d(&e.path));
    }
    for b in &pic.boxes {
        s.push_str(&box_group(b, m));
    }
    s.push_str("</svg>\n");
    s
}
