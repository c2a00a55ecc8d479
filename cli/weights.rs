//! `tlc weights list|fetch|path|verify`, and [`HubArgs`]: the `--offline` flag and the
//! environment every command that loads pretrained weights reads.

use crate::compile::{load, DiskLoader};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::io::IsTerminal;
use tlc_compiler::checkpoint::{Checkpoint, Hash};
use tlc_runtime::hub::Hub;

/// Where pretrained weights come from (see `tlc weights`).
#[derive(Args, Clone, Default)]
pub struct HubArgs {
    /// Never download: use only files already on this machine (also `TLC_OFFLINE=1`).
    #[arg(long, global = true)]
    pub offline: bool,
}

impl HubArgs {
    /// The hub configured from the environment and these flags.
    pub fn hub(&self) -> Hub {
        let mut hub = Hub::from_env(|k| std::env::var(k).ok());
        hub.offline |= self.offline;
        hub.progress = std::io::stderr().is_terminal();
        hub
    }
}

/// Arguments of `tlc weights`.
#[derive(Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    command: WeightsCommand,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// Per spec and variant: file, URL, hash, size, and where it is cached (default: specs/*.yaml).
    List(SpecsArgs),
    /// Download now what `tlc run` would load (every variant's with --all-variants).
    Fetch(SpecsArgs),
    /// Print the local path of a spec's checkpoint (downloading it unless --offline).
    Path(SpecsArgs),
    /// Re-check the hash, size and format of cached checkpoints.
    Verify(SpecsArgs),
}

#[derive(Args)]
struct SpecsArgs {
    /// Spec files.
    specs: Vec<String>,
    /// Only this variant.
    #[arg(long)]
    variant: Option<String>,
    /// Every variant (the default for list and verify).
    #[arg(long)]
    all_variants: bool,
}

/// `tlc weights`.
pub fn weights(a: WeightsArgs) -> u8 {
    let hub = a.hub.hub();
    let result = match &a.command {
        WeightsCommand::List(s) => checkpoints(s, true).map(|all| list(&hub, &all)),
        WeightsCommand::Fetch(s) | WeightsCommand::Path(s) => checkpoints(s, s.all_variants).and_then(|all| each(&all, |ck| hub.resolve(ck).map(|p| println!("{}", p.display())))),
        WeightsCommand::Verify(s) => checkpoints(s, true).and_then(|all| verify(&hub, &all)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// One row: spec file, variant and its checkpoint (if the spec names one).
type Row = (String, Option<String>, Option<Checkpoint>);

/// The (spec, variant) pairs of the arguments with their checkpoints, all of `specs/` by
/// default: `--variant`, else every variant when `every`, else what `tlc run` builds.
fn checkpoints(a: &SpecsArgs, every: bool) -> Result<Vec<Row>> {
    let specs = if a.specs.is_empty() { zoo_specs()? } else { a.specs.clone() };
    let mut rows = Vec::new();
    for spec in specs {
        let variants = match &a.variant {
            Some(v) => vec![Some(v.clone())],
            // The spec without a variant, then each variant.
            None if every => std::iter::once(None).chain(tlc_compiler::variants(&spec, &DiskLoader).into_iter().map(Some)).collect(),
            None => vec![None],
        };
        for v in variants {
            let Ok(g) = load(&spec, v.as_deref()) else { bail!("`{spec}` does not compile") };
            if v.is_none() && g.meta.variant.is_some() {
                continue; // the default variant, listed under its name
            }
            rows.push((spec.clone(), v, g.meta.weights));
        }
    }
    Ok(rows)
}

/// The model specs in `specs/` (files that only hold blocks for others to import are left out).
fn zoo_specs() -> Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir("specs")
        .map_err(|e| anyhow::anyhow!("cannot read specs/ ({e}): name the spec files, or run from the repository"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.starts_with("graph:"))))
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    Ok(out)
}

fn each(rows: &[Row], mut f: impl FnMut(&Checkpoint) -> Result<()>) -> Result<()> {
    for (spec, variant, ck) in rows {
        match ck {
            Some(ck) => f(ck)?,
            None => eprintln!("{spec}{}: no published checkpoint", variant.as_deref().map(|v| format!(" --variant {v}")).unwrap_or_default()),
        }
    }
    Ok(())
}

fn hash_text(h: &Hash) -> String {
    match h {
        Hash::Sha256(s) => s.clone(),
        Hash::Prefix(p) => format!("{p}... (prefix)"),
        Hash::Unpublished => "unpublished".into(),
    }
}

fn list(hub: &Hub, rows: &[Row]) {
    for (spec, variant, ck) in rows {
        let name = format!("{spec}{}", variant.as_deref().map(|v| format!(" [{v}]")).unwrap_or_default());
        let Some(ck) = ck else {
            println!("{name}\n  no published checkpoint\n");
            continue;
        };
        println!("{name}\n  file    {}", ck.file);
        for u in &ck.urls {
            println!("  url     {u}");
        }
        if let Some(p) = &ck.package {
            println!("  package {p} (published only inside this Python package)");
        }
        println!("  sha256  {}", hash_text(&ck.sha256));
        if let Some(s) = ck.size {
            println!("  size    {s} bytes");
        }
        match hub.locate(ck) {
            Some((p, place)) => println!("  cached  {} ({})\n", p.display(), place.name()),
            None => println!("  cached  no (would go to {})\n", hub.cache.join(&ck.file).display()),
        }
    }
}

fn verify(hub: &Hub, rows: &[Row]) -> Result<()> {
    let mut bad = 0;
    let mut seen = std::collections::HashSet::new();
    for (_, _, ck) in rows {
        let Some(ck) = ck.as_ref().filter(|ck| seen.insert(ck.file.clone())) else { continue };
        let Some((path, _)) = hub.locate(ck) else { continue };
        match hub.verify(ck, &path) {
            Ok(digest) => println!("ok   {} {digest}", path.display()),
            Err(e) => {
                bad += 1;
                println!("BAD  {e:#}");
            }
        }
    }
    if bad > 0 {
        bail!("{bad} cached checkpoint(s) failed verification: delete them and fetch again");
    }
    Ok(())
}
