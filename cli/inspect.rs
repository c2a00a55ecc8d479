//! `tlc check`, `tlc summary`, `tlc dot` and `tlc params`.

use crate::compile::load;
use clap::Args;
use tlc_compiler::emit;

/// Arguments of `tlc check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build (e.g. `lite2`, `s`).
    #[arg(long)]
    pub variant: Option<String>,
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
