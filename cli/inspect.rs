//! `tlc check`, `tlc summary`, `tlc dot` and `tlc params`.

use crate::compile::{load, load_with_sources};
use clap::Args;
use std::path::{Path, PathBuf};
use tlc_compiler::{against, emit, render};

/// Arguments of `tlc check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build (e.g. `lite2`, `s`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Compare the spec's parameter names and shapes with this checkpoint (safetensors,
    /// PyTorch, Ultralytics or darknet) without running anything; exit 1 on any difference.
    #[arg(long, value_name = "CKPT")]
    pub against: Option<PathBuf>,
}

/// Arguments of `tlc summary`.
#[derive(Args)]
pub struct SummaryArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Show the inference-optimized graph (BatchNorm folded, activations fused, identities
    /// and dead nodes removed) and the fusions.
    #[arg(long)]
    pub optimized: bool,
}

/// Arguments of `tlc dot`.
#[derive(Args)]
pub struct DotArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Collapse block instances nested deeper than N.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Layout direction.
    #[arg(long, default_value = "TB", value_parser = ["LR", "TB"])]
    pub rankdir: String,
}

/// Arguments of `tlc params`.
#[derive(Args)]
pub struct ParamsArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Print `[[name, [shape...]], ...]` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tlc check`.
pub fn check(a: CheckArgs) -> u8 {
    if let Some(ckpt) = &a.against {
        return check_against(&a.spec, a.variant.as_deref(), ckpt);
    }
    match load(&a.spec, a.variant.as_deref()) {
        Ok(g) => {
            println!("{}", emit::check_line(&g));
            0
        }
        Err(f) => f.code(),
    }
}

/// `tlc summary`.
pub fn summary(a: SummaryArgs) -> u8 {
    match load(&a.spec, a.variant.as_deref()) {
        Ok(g) if a.optimized => {
            let o = tlc_compiler::passes::optimize(&g);
            print!("{}", emit::summary(&o.graph));
            print!("{}", tlc_compiler::passes::describe(&o));
            0
        }
        Ok(g) => {
            print!("{}", emit::summary(&g));
            0
        }
        Err(f) => f.code(),
    }
}

/// `tlc dot`.
pub fn dot(a: DotArgs) -> u8 {
    match load(&a.spec, a.variant.as_deref()) {
        Ok(g) => {
            let text = emit::dot(&g, &emit::DotOptions { depth: a.depth, rankdir: a.rankdir });
            match a.output {
                Some(path) => match std::fs::write(&path, text) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: cannot write `{path}`: {e}");
                        2
                    }
                },
                None => {
                    print!("{text}");
                    0
                }
            }
        }
        Err(f) => f.code(),
    }
}

/// `tlc params`.
pub fn params(a: ParamsArgs) -> u8 {
    match load(&a.spec, a.variant.as_deref()) {
        Ok(g) => {
            if a.json {
                println!("{}", emit::params_json(&g));
            } else {
                for p in g.params() {
                    println!("{} {:?}", p.name, p.shape);
                }
            }
            0
        }
        Err(f) => f.code(),
    }
}

/// `tlc check --against`: the spec's parameters against a checkpoint's names and shapes.
fn check_against(spec: &str, variant: Option<&str>, ckpt: &Path) -> u8 {
    let (graph, sources) = match load_with_sources(spec, variant) {
        Ok(x) => x,
        Err(f) => return f.code(),
    };
    let weights = match tlc_runtime::pretrained::load_for_graph(ckpt, &graph) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let list: Vec<(String, Vec<usize>)> = weights.iter().map(|(n, t)| (n.to_string(), t.dims().to_vec())).collect();
    let c = against::compare(&graph, &list);
    if c.ok() {
        println!("{}", c.summary(&graph.meta.name, &ckpt.display().to_string()));
        return 0;
    }
    render::emit_stderr(&c.diagnostics, &sources, crate::compile::color());
    eprintln!("error: {}", c.summary(spec, &ckpt.display().to_string()));
    1
}
