//! Compiling a spec from disk for any subcommand: the disk source loader and diagnostics on stderr.

use std::path::Path;
use tlc_compiler::ir::Graph;
use tlc_compiler::span::{SourceLoader, Sources};
use tlc_compiler::{compile, render, Options};

/// Whether diagnostics are coloured, decided once in `main` from `--color` and the environment.
static COLOR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `--color auto|always|never`: `auto` colours only a terminal and honours `NO_COLOR`.
pub fn set_color(mode: &str) {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let on = match mode {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal() && !no_color,
    };
    let _ = COLOR.set(on);
}

/// Whether to colour diagnostics (see [`set_color`]).
pub fn color() -> bool {
    *COLOR.get().unwrap_or(&false)
}

/// Reads spec files from the file system (the compiler itself never does).
pub struct DiskLoader;

impl SourceLoader for DiskLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(Path::new(path)).map_err(|e| e.to_string())
    }
}

/// Exit code of a failed compilation: 2 when the spec file itself cannot be read, 1 otherwise.
pub enum Failure {
    /// Diagnostics were printed.
    Invalid,
    /// The file could not be read.
    Io,
}

impl Failure {
    /// Process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Invalid => 1,
            Failure::Io => 2,
        }
    }
}

/// Compiles `path` for `variant`, printing diagnostics on stderr.
pub fn load(path: &str, variant: Option<&str>) -> Result<Graph, Failure> {
    load_with_sources(path, variant).map(|(g, _)| g)
}

/// Like [`load`], also returning the files read (to render later diagnostics about the spec).
pub fn load_with_sources(path: &str, variant: Option<&str>) -> Result<(Graph, Sources), Failure> {
    if let Err(e) = std::fs::metadata(path) {
        eprintln!("error: cannot read `{path}`: {e}");
        return Err(Failure::Io);
    }
    let c = compile(path, &DiskLoader, &Options { variant: variant.map(|s| s.to_string()) });
    if !c.diagnostics.is_empty() {
        render::emit_stderr(&c.diagnostics, &c.sources, color());
    }
    match c.graph {
        Some(g) => Ok((g, c.sources)),
        None => {
            let n = c.diagnostics.iter().filter(|d| d.severity == tlc_compiler::diag::Severity::Error).count();
            eprintln!("error: `{path}` has {n} error{}", if n == 1 { "" } else { "s" });
            Err(Failure::Invalid)
        }
    }
}

/// Compiles `spec` and runs `job` on the graph: exit 0 on success, the compile failure's code,
/// or 2 with the error chain on stderr when the job fails (bad weights, images, I/O).
pub fn with_graph(spec: &str, variant: Option<&str>, job: impl FnOnce(Graph) -> anyhow::Result<()>) -> u8 {
    let graph = match load(spec, variant) {
        Ok(g) => g,
        Err(f) => return f.code(),
    };
    match job(graph) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
