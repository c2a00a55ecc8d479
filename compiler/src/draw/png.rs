//! PNG output: the SVG rasterized by resvg (pure Rust) with the bundled font only, so a picture
//! looks the same on every machine and needs no system fonts or libraries.

use resvg::tiny_skia::{Color, Pixmap, Transform};
use resvg::usvg::{fontdb, Options, Tree};
use std::sync::Arc;

/// DejaVu Sans Mono, subset to ASCII and a few symbols (see `font/LICENSE`).
const REGULAR: &[u8] = include_bytes!("font/DejaVuSansMono.ttf");
/// Its bold face.
const BOLD: &[u8] = include_bytes!("font/DejaVuSansMono-Bold.ttf");

/// At most this many pixels: larger pictures are rendered at a smaller scale.
const MAX_PIXELS: f64 = 48e6;
/// At most this many pixels on a side.
const MAX_SIDE: f64 = 30_000.0;

/// Rasterizes SVG text at `scale` (reduced as needed to stay under the pixel limits).
pub fn rasterize(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    let mut db = fontdb::Database::new();
    db.load_font_data(REGULAR.to_vec());
    db.load_font_data(BOLD.to_vec());
    let opts = Options { fontdb: Arc::new(db), font_family: "DejaVu Sans Mono".into(), ..Options::default() };
    let tree = Tree::from_str(svg, &opts).map_err(|e| format!("cannot read the SVG: {e}"))?;
    let (w, h) = (tree.size().width() as f64, tree.size().height() as f64);
    let s = (scale as f64).min((MAX_PIXELS / (w * h)).sqrt()).min(MAX_SIDE / w.max(h));
    let (pw, ph) = ((w * s).ceil() as u32, (h * s).ceil() as u32);
    let mut pixmap = Pixmap::new(pw.max(1), ph.max(1)).ok_or_else(|| format!("cannot allocate a {pw}x{ph} picture"))?;
    pixmap.fill(Color::WHITE);
    resvg::render(&tree, Transform::from_scale(s as f32, s as f32), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("cannot encode the PNG: {e}"))
}
