//! `tlc eval`: accuracy, per-class and macro precision/recall/F1, ROC AUC and the confusion
//! matrix of a classifier on a folder of class subfolders.

use crate::compile::with_graph;
use crate::run::device;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tlc_runtime::pretrained::pretrained_model;
use tlc_runtime::train::evaluate::evaluate_folder;

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
    let dev = device(&a.device)?;
    let model = pretrained_model(graph, &a.hub.hub(), a.weights.as_deref(), false, &dev)?;
    let ev = evaluate_folder(&model, &a.data, a.batch)?;
    for s in &ev.skipped {
        eprintln!("warning: skipping {}: {}", s.path.display(), s.reason);
    }
    let (r, classes) = (&ev.report, &ev.classes);
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["classes"] = serde_json::json!(classes);
        v["samples"] = serde_json::json!(ev.samples);
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("{} images, {} classes ({} skipped)", ev.samples, classes.len(), ev.skipped.len());
    println!("accuracy  {:.4}", r.accuracy);
    println!("{:<16} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support");
    for (c, name) in classes.iter().enumerate() {
        println!("{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}", name, r.per_class_precision[c], r.per_class_recall[c], r.per_class_f1[c], r.support[c]);
    }
    println!("{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}", "macro", r.precision, r.recall, r.f1, ev.samples);
    if let Some(auc) = r.auc {
        println!("ROC AUC   {auc:.4}");
    }
    println!("confusion (rows: true, columns: predicted)");
    for (c, row) in r.confusion.iter().enumerate() {
        println!("  {:<14} {}", classes[c], row.iter().map(|v| format!("{v:>6}")).collect::<String>());
    }
    Ok(())
}
