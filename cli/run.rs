//! `tlc run`: classify or detect with a model (filled in with the runtime).

use clap::Args;

/// Arguments of `tlc run`.
#[derive(Args)]
pub struct RunArgs {
    /// Spec file.
    pub spec: String,
}

/// `tlc run`.
pub fn run(_a: RunArgs) -> u8 {
    2
}
