//! `tlc features`: intermediate features of a folder of images, saved as safetensors with the
//! file names in its metadata (`files`, a JSON list in row order).

use crate::compile::with_graph;
use crate::run::device;
use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;
use tlc_runtime::pretrained::pretrained_model;
use tlc_runtime::train::checkpoint::save_with_metadata;
use tlc_runtime::train::data::{list_files, load_prepared, Sample};
use tlc_runtime::train::evaluate;

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

/// `tlc features`.
pub fn features(a: FeaturesArgs) -> u8 {
    with_graph(&a.spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(graph: tlc_compiler::ir::Graph, a: &FeaturesArgs) -> Result<()> {
    let taps: Vec<_> = a.layers.iter().map(|f| graph.find(f).ok_or_else(|| anyhow!("--layers: no node or item named `{f}` (see `tlc summary {}`)", a.spec))).collect::<Result<_>>()?;
    let files = list_files(&a.images)?;
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
    let data: Vec<&[f32]> = ok.iter().map(|(_, d)| d.as_slice()).collect();
    let values = evaluate::features(&model, &data, &taps, a.batch)?;
    let list: Vec<(String, Tensor)> = a.layers.iter().cloned().zip(values).collect();
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
