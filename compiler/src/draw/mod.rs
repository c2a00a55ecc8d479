//! Pictures of a graph without Graphviz: a layered layout done here ([`layout`]) over the
//! instance tree of the IR ([`model`]), composed into a [`picture::Picture`], written as SVG
//! ([`svg`]), PNG ([`png`], rasterized in pure Rust) or one self-contained interactive HTML
//! file ([`html`]). Everything returns strings or bytes; the CLI writes the files.

pub mod html;
pub mod layout;
pub mod model;
pub mod picture;
pub mod png;
pub mod style;
pub mod svg;

use crate::ir::Graph;
use crate::span::Sources;

/// Direction of the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Top to bottom.
    TopBottom,
    /// Left to right.
    LeftRight,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct DrawOptions {
    /// Levels of the instance tree shown: 1 draws each top-level block instance as one box,
    /// 2 opens those into frames with their own instances as boxes, and so on (the picture
    /// `tlc dot --depth N-1` describes).
    pub depth: usize,
    /// Rank direction.
    pub direction: Direction,
    /// Tensor shapes on edges.
    pub shapes: bool,
}

impl Default for DrawOptions {
    fn default() -> Self {
        DrawOptions { depth: 1, direction: Direction::TopBottom, shapes: false }
    }
}

/// The picture's geometry (for checks and for other writers).
pub fn picture(g: &Graph, opts: &DrawOptions) -> picture::Picture {
    picture::Composer::new(g, opts).picture()
}

/// The picture as an SVG document.
pub fn svg(g: &Graph, opts: &DrawOptions) -> String {
    let c = picture::Composer::new(g, opts);
    let m = c.m;
    let mut c = c;
    svg::document(&c.picture(), &m)
}

/// The picture as PNG bytes, at twice the SVG's pixel size when that stays under the limits.
pub fn png(g: &Graph, opts: &DrawOptions) -> Result<Vec<u8>, String> {
    png::rasterize(&svg(g, opts), 2.0)
}

/// The interactive viewer: one HTML file with data, markup and script inline. `sources` gives
/// the spec lines the nodes came from.
pub fn html(g: &Graph, sources: &Sources, opts: &DrawOptions) -> String {
    html::page(g, sources, opts)
}
