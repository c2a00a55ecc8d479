//! `tlc eval`: accuracy, per-class and macro precision/recall/F1, ROC AUC and the confusion
//! matrix of a classifier on a folder of class subfolders.

use crate::compile::with_graph;
use crate::run::device;
use tlc_runtime::pretrained::pretrained_model;
use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Args;
use std::path::PathBuf;
use tlc_compiler::ir::Labels;
use tlc_runtime::train::data::{load_prepared, scan};
use tlc_runtime::train::metrics::report;

/// Arguments of `tlc eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Spec (e.g. a training run's model.yaml).
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Weights (default: the spec's checkpoint, downloaded on first use).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: crate::weights::HubArgs,
    /// Folder of class subfolders (or a dataset root with val/).
    #[arg(long)]
    pub data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `tlc eval`.
pub fn eval(a: EvalArgs) -> u8 {
    with_graph(&a.spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(graph: tlc_compiler::ir::Graph, a: &EvalArgs) -> Result<()> {
    let dir = ["val", "validation"].iter().map(|v| a.data.join(v)).find(|p| p.is_dir()).unwrap_or_else(|| a.data.clone());
    let labels = match &graph.meta.labels {
        Labels::List(l) => Some(l.clone()),
        _ => None,
    };
    let (classes, samples) = scan(&dir, labels.as_deref())?;
    let dev = device(&a.device)?;
    let model = pretrained_model(graph, &a.hub.hub(), a.weights.as_deref(), false, &dev)?;
    let (ok, skipped) = load_prepared(&samples, &model.graph.meta.preprocess);
    for s in &skipped {
        eprintln!("warning: skipping {}: {}", s.path.display(), s.reason);
    }
    if ok.is_empty() {
        bail!("no usable images in {}", dir.display());
    }
    let input = &model.graph.meta.input;
    let fast = model.optimized().ok();
    let mut scores: Vec<Vec<f32>> = Vec::new();
    for chunk in ok.chunks(a.batch.max(1)) {
        let mut data = Vec::new();
        for (_, d) in chunk {
            data.extend_from_slice(d);
        }
        let x = Tensor::from_vec(data, (chunk.len(), input[0], input[1], input[2]), &dev)?;
        let logits = match fast.as_ref().map(|m| m.forward(&x)) {
            Some(Ok(y)) => y,
            _ => model.forward(&x)?,
        };
        let y = candle_nn_softmax(&logits.flatten_from(1)?)?;
        scores.extend(y.to_vec2::<f32>()?);
    }
    if scores[0].len() < classes.len() {
        bail!("the model has {} outputs but the data has {} classes", scores[0].len(), classes.len());
    }
    let labels: Vec<usize> = ok.iter().map(|(s, _)| s.label).collect();
    let r = report(&scores, &labels, classes.len());
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["classes"] = serde_json::json!(classes);
        v["samples"] = serde_json::json!(labels.len());
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("{} images, {} classes ({} skipped)", labels.len(), classes.len(), skipped.len());
    println!("accuracy  {:.4}", r.accuracy);
    println!("{:<16} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support");
    for (c, name) in classes.iter().enumerate() {
        println!("{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}", name, r.per_class_precision[c], r.per_class_recall[c], r.per_class_f1[c], r.support[c]);
    }
    println!("{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}", "macro", r.precision, r.recall, r.f1, labels.len());
    if let Some(auc) = r.auc {
        println!("ROC AUC   {auc:.4}");
    }
    println!("confusion (rows: true, columns: predicted)");
    for (c, row) in r.confusion.iter().enumerate() {
        println!("  {:<14} {}", classes[c], row.iter().map(|v| format!("{v:>6}")).collect::<String>());
    }
    Ok(())
}

fn candle_nn_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(1)?)?)
}
