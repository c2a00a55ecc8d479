//! `tlc draw` (SVG or PNG picture) and `tlc view` (interactive HTML): argument handling and
//! writing the file; the pictures come from `tlc_compiler::draw`.

use crate::compile::load_with_sources;
use clap::Args;
use tlc_compiler::draw::{self, Direction, DrawOptions};

/// Arguments of `tlc draw`.
#[derive(Args)]
pub struct DrawArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Output file: `.svg` or `.png`.
    #[arg(short = 'o', long)]
    pub output: String,
    /// Levels of blocks shown: 1 draws each top-level block instance as one box, 2 opens
    /// them into frames, and so on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub depth: u32,
    /// Rank direction.
    #[arg(long, default_value = "TB", value_parser = ["TB", "LR"])]
    pub rankdir: String,
    /// Label edges with tensor shapes.
    #[arg(long)]
    pub shapes: bool,
}

/// Arguments of `tlc view`.
#[derive(Args)]
pub struct ViewArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Output file (`.html`).
    #[arg(short = 'o', long)]
    pub output: String,
    /// Levels of blocks open when the page loads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub depth: u32,
    /// Rank direction.
    #[arg(long, default_value = "TB", value_parser = ["TB", "LR"])]
    pub rankdir: String,
}

fn options(depth: u32, rankdir: &str, shapes: bool) -> DrawOptions {
    let direction = if rankdir == "LR" { Direction::LeftRight } else { Direction::TopBottom };
    DrawOptions { depth: depth as usize, direction, shapes }
}

fn write(path: &str, bytes: &[u8]) -> u8 {
    match std::fs::write(path, bytes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: cannot write `{path}`: {e}");
            2
        }
    }
}

/// `tlc draw`.
pub fn draw_cmd(a: DrawArgs) -> u8 {
    let lower = a.output.to_ascii_lowercase();
    let png = lower.ends_with(".png");
    if !png && !lower.ends_with(".svg") {
        eprintln!("error: `{}`: the output must end in .svg or .png", a.output);
        return 2;
    }
    let g = match load_with_sources(&a.spec, a.variant.as_deref()) {
        Ok((g, _)) => g,
        Err(f) => return f.code(),
    };
    let opts = options(a.depth, &a.rankdir, a.shapes);
    if !png {
        return write(&a.output, draw::svg(&g, &opts).as_bytes());
    }
    match draw::png(&g, &opts) {
        Ok(bytes) => write(&a.output, &bytes),
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `tlc view`.
pub fn view(a: ViewArgs) -> u8 {
    match load_with_sources(&a.spec, a.variant.as_deref()) {
        Ok((g, sources)) => write(&a.output, draw::html(&g, &sources, &options(a.depth, &a.rankdir, true)).as_bytes()),
        Err(f) => f.code(),
    }
}
