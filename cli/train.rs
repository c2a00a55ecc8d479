//! `tlc train`: transfer learning from the command line (the loop is in
//! `tlc_runtime::train::fit`).

use crate::compile::{with_graph, DiskLoader};
use crate::run::device;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tlc_compiler::ir::Graph;
use tlc_compiler::span::SourceLoader;
use tlc_compiler::surgery::{default_head, head_cut, normalise_head, transfer_spec, TransferSpec};
use tlc_compiler::{compile, render, Options};
use tlc_runtime::train::data::load_split;
use tlc_runtime::train::fit::{train, Config, Setup};
use tlc_runtime::train::optim::Kind;
use tlc_runtime::weights::{find_weights, Weights};

/// Arguments of `tlc train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Spec of the pretrained network (cut at its `head:`).
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Pretrained weights (default: the spec's `weights:` in $TLC_WEIGHTS).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Dataset: DIR/train/<class>/* and DIR/val/<class>/* (or DIR/<class>/* with --val-split).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder (model.yaml, best/last.safetensors, metrics.csv, summary.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// `base`: train only the new head (base features cached); `none`: train everything.
    #[arg(long, default_value = "base")]
    pub freeze: String,
    /// The new head as a chain, e.g. "avgpool -> dropout(0.2) -> linear(256) -> relu -> linear(classes)"
    /// (default: global average pooling, flatten, dropout 0.2, linear(classes)).
    #[arg(long)]
    pub head: Option<String>,
    /// adam, adamw, sgd or rmsprop.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Weight decay (default 0; 0.01 for adamw).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Fraction of each class held out for validation when DIR has no val/ folder.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Seed (head initialisation, split, shuffles, dropout, augmentation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many epochs without a lower validation loss.
    #[arg(long)]
    pub early_stopping: Option<usize>,
    /// Turn off augmentation when the base is trained (it is always off with a frozen base).
    #[arg(long)]
    pub no_augment: bool,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Serves one generated file from memory and everything else from disk.
pub struct OverlayLoader {
    /// Path of the generated file.
    pub path: String,
    /// Its text.
    pub text: String,
}

impl SourceLoader for OverlayLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        if path == self.path {
            Ok(self.text.clone())
        } else {
            DiskLoader.load(path)
        }
    }
}

/// Compiles spec text as if it were the file `path`, printing diagnostics.
pub fn compile_text(path: &str, text: &str) -> Result<Graph> {
    let c = compile(path, &OverlayLoader { path: path.to_string(), text: text.to_string() }, &Options::default());
    if !c.diagnostics.is_empty() {
        render::emit_stderr(&c.diagnostics, &c.sources);
    }
    c.graph.ok_or_else(|| anyhow!("the generated transfer spec does not compile (see above)"))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
}

/// `tlc train`.
pub fn train_cmd(a: TrainArgs) -> u8 {
    with_graph(&a.spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(graph: Graph, a: &TrainArgs) -> Result<()> {
    let freeze_base = match a.freeze.as_str() {
        "base" => true,
        "none" => false,
        other => bail!("--freeze {other}: use base or none"),
    };
    let (_, feature) = head_cut(&graph).map_err(|e| anyhow!(e))?;
    let rank = graph.node(feature).shape.as_ref().map(|s| s.len()).unwrap_or(1);
    let split = load_split(&a.data, a.val_split, a.seed)?;
    if split.classes.len() < 2 {
        bail!("{} has {} class folder(s); at least 2 are needed", a.data.display(), split.classes.len());
    }
    eprintln!("data: {} classes {:?}, {} training and {} validation files", split.classes.len(), split.classes, split.train.len(), split.val.len());
    let chain = normalise_head(a.head.as_deref().unwrap_or(&default_head(rank)), split.classes.len(), rank);
    let spec_path = absolute(Path::new(&a.spec));
    let spec_dir = spec_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = std::fs::read_to_string(&spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    let import_path = |p: &str| -> String { if p.starts_with('/') { p.to_string() } else { spec_dir.join(p).display().to_string() } };
    let (yaml, scope) = transfer_spec(&text, &TransferSpec { labels: &split.classes, head_chain: &chain, variant: graph.meta.variant.as_deref(), import_path: &import_path }).map_err(|e| anyhow!("cannot cut {}: {e}", a.spec))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let model_path = absolute(&a.out).join("model.yaml");
    let new_graph = compile_text(&model_path.display().to_string(), &yaml)?;
    let out_shape = new_graph.node(new_graph.output).shape.clone().unwrap_or_default();
    if out_shape != [split.classes.len()] {
        bail!("the new head outputs {:?} per image; it must output [{}] (end it with linear(classes), after pooling/flatten)", out_shape, split.classes.len());
    }
    eprintln!("head `{scope}`: {chain}  (feature: `{}` {:?})", graph.node(feature).name, graph.node(feature).shape.clone().unwrap_or_default());
    let wpath = match (&a.weights, &graph.meta.weights) {
        (Some(p), _) => p.clone(),
        (None, Some(name)) => find_weights(name)?,
        (None, None) => bail!("give --weights PRETRAINED (the spec names no default weights)"),
    };
    let weights = Weights::load(&wpath)?;
    let optimizer = Kind::parse(&a.optimizer, a.momentum, a.nesterov)?;
    let cfg = Config {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        optimizer,
        weight_decay: a.weight_decay.unwrap_or(if optimizer == Kind::AdamW { 0.01 } else { 0.0 }),
        seed: a.seed,
        early_stopping: a.early_stopping,
        freeze_base,
        augment: !freeze_base && !a.no_augment,
    };
    let setup = Setup {
        graph: new_graph,
        head_scope: scope,
        weights,
        split,
        out: a.out.clone(),
        model_yaml: yaml,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let dev = device(&a.device)?;
    let s = train(setup, &cfg, &dev, &mut |line| eprintln!("{line}"))?;
    println!(
        "best val_accuracy {:.4} at epoch {} ({} train / {} val images; data {:.1}s, training {:.1}s, total {:.1}s) -> {}",
        s.best_val_accuracy, s.best_epoch, s.train_samples, s.val_samples, s.data_seconds, s.train_seconds, s.total_seconds, a.out.display()
    );
    Ok(())
}
