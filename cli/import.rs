//! `tlc import darknet FILE.cfg [--names FILE.names] [-o spec.yaml]`: reads the files, prints
//! the importer's diagnostics, checks the spec it wrote and writes it out.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use tlc_compiler::span::{MemoryLoader, Sources};
use tlc_compiler::{compile, import, render, Options};

/// `tlc import`.
#[derive(Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    from: Source,
}

#[derive(Subcommand)]
enum Source {
    /// A darknet .cfg (Yolo-Fastest, YOLOv3/v4 tiny, ...): layers named `layers.<index>`, so the
    /// darknet .weights load as they are.
    Darknet(DarknetArgs),
}

#[derive(Args)]
struct DarknetArgs {
    /// The darknet network description.
    cfg: PathBuf,
    /// Class names, one per line (darknet's .names); default: COCO's for 80 classes.
    #[arg(long)]
    names: Option<PathBuf>,
    /// Where to write the spec (default: standard output).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// Runs `tlc import`: 0 on success, 1 for a cfg the importer refuses, 2 for I/O errors.
pub fn import_cmd(a: ImportArgs) -> u8 {
    let Source::Darknet(a) = a.from;
    let mut sources = Sources::default();
    let mut read = |p: &PathBuf| match std::fs::read_to_string(p) {
        Ok(t) => Ok(sources.add(&p.display().to_string(), t)),
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", p.display());
            Err(2)
        }
    };
    let cfg = match read(&a.cfg) {
        Ok(f) => f,
        Err(c) => return c,
    };
    let names = match a.names.as_ref().map(&mut read).transpose() {
        Ok(f) => f,
        Err(c) => return c,
    };
    let spec = match import::darknet::import(&sources, cfg, names) {
        Ok(s) => s,
        Err(diags) => {
            render::emit_stderr(&diags, &sources, crate::compile::color());
            eprintln!("error: `{}` cannot be imported", a.cfg.display());
            return 1;
        }
    };
    let target = a.output.as_ref().map_or("<stdout>".to_string(), |p| p.display().to_string());
    let checked = compile(&target, &MemoryLoader([(target.clone(), spec.clone())].into()), &Options::default());
    let Some(graph) = checked.graph else {
        render::emit_stderr(&checked.diagnostics, &checked.sources, crate::compile::color());
        eprintln!("error: the spec imported from `{}` does not compile (an importer bug; please report it)", a.cfg.display());
        return 1;
    };
    match &a.output {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &spec) {
                eprintln!("error: cannot write `{}`: {e}", p.display());
                return 2;
            }
        }
        None => print!("{spec}"),
    }
    let params: usize = graph.nodes().flat_map(|(_, n)| n.params.iter()).map(|p| p.shape.iter().product::<usize>()).sum();
    eprintln!(
        "{target}: {} lines; {params} parameters (darknet's float count), {:.3} BFLOPs (darknet's count)",
        spec.lines().count(),
        import::darknet::bflops(&graph)
    );
    0
}
