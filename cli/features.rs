//! `tlc features`: intermediate features of a folder of images, saved as safetensors with the
//! file names in its metadata (`files`, a JSON list in row order).

use crate::compile::with_graph;
use crate::run::device;
use tlc_runtime::pretrained::pretrained_model;
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tlc_runtime::train::checkpoint::save_with_metadata;
use tlc_runtime::train::data::{load_prepared, Sample};

/// Arguments of `tlc features`.
#[derive(Args)]
pub struct FeaturesArgs {
    /// Spec.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Weights (default: the spec's checkpoint, downloaded on first use).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: crate::weights::HubArgs,
    /// Folder of images (searched recursively).
    #[arg(long)]
    pub images: PathBuf,
    /// Comma-separated node or item names (e.g. `_conv_head,_blocks.15`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<String>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() && !p.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(false) {
            out.push(p);
        }
    }
    Ok(())
}

/// `tlc features`.
pub fn features(a: FeaturesArgs) -> u8 {
    with_graph(&a.spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(graph: tlc_compiler::ir::Graph, a: &FeaturesArgs) -> Result<()> {
    let taps: Vec<_> = a.layers.iter().map(|f| graph.find(f).ok_or_else(|| anyhow!("--layers: no node or item named `{f}` (see `tlc summary {}`)", a.spec))).collect::<Result<_>>()?;
    let mut files = Vec::new();
    if a.images.is_dir() {
        walk(&a.images, &mut files)?;
    } else {
        files.push(a.images.clone());
    }
    let dev = device(&a.device)?;
    let model = pretrained_model(graph, &a.hub.hub(), a.weights.as_deref(), false, &dev)?;
    let samples: Vec<Sample> = files.into_iter().map(|path| Sample { path, label: 0 }).collect();
    let (ok, skipped) = load_prepared(&samples, &model.graph.meta.preprocess);
    for s in &skipped {
        eprintln!("warning: skipping {}: {}", s.path.display(), s.reason);
    }
    if ok.is_empty() {
        bail!("no usable images in {}", a.images.display());
    }
    let input = &model.graph.meta.input;
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); taps.len()];
    for chunk in ok.chunks(a.batch.max(1)) {
        let mut data = Vec::new();
        for (_, d) in chunk {
            data.extend_from_slice(d);
        }
        let x = Tensor::from_vec(data, (chunk.len(), input[0], input[1], input[2]), &dev)?;
        let (_, f) = model.forward_with(&x, &taps)?;
        for (k, t) in f.into_iter().enumerate() {
            parts[k].push(t.to_device(&Device::Cpu)?);
        }
    }
    let mut list = Vec::new();
    for (name, p) in a.layers.iter().zip(parts) {
        list.push((name.clone(), Tensor::cat(&p, 0)?));
    }
    let names: Vec<String> = ok.iter().map(|(s, _)| s.path.display().to_string()).collect();
    let mut meta = HashMap::new();
    meta.insert("files".to_string(), serde_json::to_string(&names)?);
    meta.insert("layers".to_string(), serde_json::to_string(&a.layers)?);
    save_with_metadata(&list, meta, &a.out)?;
    for (name, t) in &list {
        eprintln!("{name}: {:?}", t.dims());
    }
    println!("saved {} layer(s) of {} images to {} (file names in the metadata key `files`)", list.len(), names.len(), a.out.display());
    Ok(())
}
