//! Sizes, fonts and colours of a picture, and the text of each box. Text is set in DejaVu Sans
//! Mono (bundled for PNG output), so a string's width is its length times a fixed advance.

use crate::emit::{human, op_label};
use crate::ir::{Node, Op};

/// Font family list written into SVG and HTML.
pub const FONT_FAMILY: &str = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace";
/// Advance of one character, in ems (DejaVu Sans Mono: 1233/2048).
const ADVANCE: f64 = 0.602;

/// Spacing constants, shared by the static picture and the viewer (which receives them as data).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Metrics {
    /// Font size of a box's first line (bold) and of titles.
    pub name_size: f64,
    /// Font size of the other lines of a box.
    pub text_size: f64,
    /// Font size of tensor-shape labels.
    pub label_size: f64,
    /// Distance between baselines in a box.
    pub line_height: f64,
    /// Padding inside a box.
    pub box_pad_x: f64,
    /// Padding above and below a box's text.
    pub box_pad_y: f64,
    /// Padding inside a cluster frame.
    pub cluster_pad: f64,
    /// Across-axis gap between boxes.
    pub item_gap: f64,
    /// Across-axis gap next to bend points and ports.
    pub point_gap: f64,
    /// Along-axis gap between ranks (where edges bend).
    pub rank_gap: f64,
    /// Gap between a box and its shape label.
    pub label_gap: f64,
}

/// The metrics for a direction (left-to-right pictures need more room between ranks).
pub fn metrics(left_right: bool) -> Metrics {
    Metrics {
        name_size: 11.0,
        text_size: 10.0,
        label_size: 9.0,
        line_height: 13.0,
        box_pad_x: 7.0,
        box_pad_y: 5.0,
        cluster_pad: 10.0,
        item_gap: 18.0,
        point_gap: 8.0,
        rank_gap: if left_right { 24.0 } else { 26.0 },
        label_gap: 3.0,
    }
}

/// Width of `text` at font `size`.
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * ADVANCE
}

/// One line of a box.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The text.
    pub text: String,
    /// First line: bold and larger.
    pub strong: bool,
    /// Secondary information (grey).
    pub dim: bool,
}

/// What a box shows, and its size.
#[derive(Clone, Debug)]
pub struct BoxText {
    /// Lines from the top.
    pub lines: Vec<Line>,
    /// Fill colour.
    pub fill: &'static str,
    /// A collapsed block instance (drawn with a heavier border).
    pub block: bool,
    /// Width in pixels.
    pub w: f64,
    /// Height in pixels.
    pub h: f64,
}

impl BoxText {
    fn new(lines: Vec<Line>, fill: &'static str, block: bool, m: &Metrics) -> BoxText {
        let w = lines.iter().map(|l| text_width(&l.text, if l.strong { m.name_size } else { m.text_size })).fold(0.0, f64::max) + 2.0 * m.box_pad_x;
        let h = lines.len() as f64 * m.line_height + 2.0 * m.box_pad_y;
        BoxText { lines, fill, block, w: w.ceil(), h }
    }
}

fn line(text: impl Into<String>, strong: bool, dim: bool) -> Line {
    Line { text: text.into(), strong, dim }
}

/// `name` without the `parent.` prefix it shares with its enclosing instance.
pub fn relative<'a>(name: &'a str, parent: &str) -> &'a str {
    if parent.is_empty() {
        return name;
    }
    name.strip_prefix(parent).and_then(|r| r.strip_prefix('.')).filter(|r| !r.is_empty()).unwrap_or(name)
}

/// `12.3K params`, or nothing for parameter-free boxes.
fn params_line(count: usize) -> Option<Line> {
    (count > 0).then(|| line(format!("{} params", human(count as u64)), false, true))
}

/// The box of an IR node inside the instance at `parent`.
pub fn node_box(n: &Node, parent: &str, m: &Metrics) -> BoxText {
    let mut lines = vec![line(relative(&n.name, parent), true, false), line(op_label(&n.op), false, false)];
    lines.extend(params_line(n.params.iter().map(|p| p.numel()).sum()));
    BoxText::new(lines, fill(&n.op), false, m)
}

/// The box of a collapsed block instance.
pub fn block_box(path: &str, parent: &str, block: &str, params: usize, m: &Metrics) -> BoxText {
    let mut lines = vec![line(relative(path, parent), true, false), line(format!("[{block}]"), false, false)];
    lines.extend(params_line(params));
    BoxText::new(lines, "#e9eef6", true, m)
}

/// A tensor shape as a compact label: `256×56×56`.
pub fn shape_label(shape: &Option<Vec<usize>>) -> String {
    match shape {
        Some(s) if s.is_empty() => "scalar".into(),
        Some(s) => s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×"),
        None => "?".into(),
    }
}

/// Fill colour by kind of op.
pub fn fill(op: &Op) -> &'static str {
    match op {
        Op::Input => "#d7f0ee",
        Op::Conv { .. } => "#d9e7fb",
        Op::Linear { .. } => "#fbe0d4",
        Op::BatchNorm { .. } | Op::LayerNorm { .. } | Op::ChannelAffine { .. } | Op::Scale { .. } => "#e2f2dc",
        Op::Act(_) | Op::Softmax { .. } => "#fdf1c9",
        Op::MaxPool { .. } | Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } | Op::GlobalPool { .. } | Op::Upsample { .. } | Op::PatchMerge => "#ebdff6",
        Op::Add | Op::Mul | Op::Concat { .. } | Op::Chunk { .. } => "#ececec",
        Op::SelfAttention { .. } | Op::WindowAttention { .. } | Op::ClassToken | Op::PosEmbed => "#f9dcea",
        Op::DetectV8 { .. } | Op::YoloHead { .. } => "#f6d6d6",
        _ => "#f5f5f5",
    }
}
