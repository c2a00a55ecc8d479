//! `tlc train`: transfer learning from the command line (the loop is in
//! `tlc_runtime::train::fit`).

use crate::compile::{with_graph, DiskLoader};
use crate::run::device;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tlc_compiler::ir::Graph;
use tlc_compiler::span::SourceLoader;
use tlc_compiler::surgery::{default_head, head_cut, normalise_head, transfer_spec, TransferSpec};
use tlc_compiler::{compile, render, Options};
use tlc_runtime::train::data::load_split;
use tlc_runtime::train::fit::{train, Config, FineTune, Freeze, Schedule, Setup, Unfreeze};
use tlc_runtime::train::optim::Kind;
use tlc_runtime::pretrained::{load_for_graph, weights_path};

/// Arguments of `tlc train`.
#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Spec of the pretrained network (cut at its `head:`).
    #[arg(required_unless_present = "resume")]
    pub spec: Option<String>,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Pretrained weights (default: the spec's checkpoint, downloaded on first use).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: crate::weights::HubArgs,
    /// Dataset: DIR/train/<class>/* and DIR/val/<class>/* (or DIR/<class>/* with --val-split).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Output folder (model.yaml, best/last.safetensors, metrics.csv, summary.json, plots).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Epochs (of the first phase).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// `base`: train only the new head (base features cached); `none`: train everything;
    /// `until:NODE`: freeze every node up to and including NODE (a node or scope name), train the rest.
    #[arg(long, default_value = "base")]
    pub freeze: String,
    /// The new head as a chain, e.g. "avgpool -> dropout(0.2) -> linear(256) -> relu -> linear(classes)"
    /// (default: global average pooling, flatten, dropout 0.2, linear(classes)).
    #[arg(long)]
    pub head: Option<String>,
    /// adam, adamw, sgd or rmsprop.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning rate (of the first phase).
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
    /// After the first phase, fine-tune for this many epochs (starting from the best weights).
    #[arg(long, value_name = "EPOCHS")]
    pub fine_tune: Option<usize>,
    /// What fine-tuning unfreezes: `last:K` (the last K parameterised nodes of the base: each conv,
    /// BatchNorm or linear counts one) or `from:NODE` (NODE, a node or scope name, and everything after).
    #[arg(long)]
    pub unfreeze: Option<String>,
    /// Learning rate of fine-tuning.
    #[arg(long, default_value_t = 1e-5)]
    pub fine_tune_lr: f64,
    /// BatchNorm layers with frozen parameters use batch statistics and update their running
    /// statistics (by default they run in inference mode).
    #[arg(long)]
    pub train_bn: bool,
    /// Learning-rate schedule of each phase: constant, step:EPOCHS:GAMMA or cosine.
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Multiply the learning rate by 0.1 when val_loss has not improved for more than 2 epochs
    /// (PyTorch ReduceLROnPlateau: patience 2, relative threshold 1e-4).
    #[arg(long)]
    pub reduce_lr_on_plateau: bool,
    /// Fraction of each class held out for validation when DIR has no val/ folder.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Seed (head initialisation, split, shuffles, dropout, augmentation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop a phase after this many epochs without a lower val_loss; the weights of
    /// best.safetensors are restored.
    #[arg(long)]
    pub early_stopping: Option<usize>,
    /// Turn off augmentation when (part of) the base is trained (always off with a frozen base).
    #[arg(long)]
    pub no_augment: bool,
    /// Continue the interrupted run in RUN with its original arguments (RUN/args.json).
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs of this invocation, as if interrupted (for tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The arguments of a run as saved in `RUN/args.json`, parsed again on `--resume`.
#[derive(Parser)]
struct SavedArgs {
    #[command(flatten)]
    a: TrainArgs,
}

/// The original arguments of the run in `run` (relative paths resolved against the original
/// working folder), with this invocation's `--stop-after`.
fn saved_args(run: &Path, now: &TrainArgs) -> Result<TrainArgs> {
    let path = run.join("args.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("cannot resume {}: no readable {}", run.display(), path.display()))?)?;
    let cwd = PathBuf::from(v["cwd"].as_str().unwrap_or("."));
    let args: Vec<String> = v["args"].as_array().ok_or_else(|| anyhow!("{}: no `args`", path.display()))?.iter().filter_map(|x| x.as_str().map(String::from)).collect();
    let mut a = SavedArgs::try_parse_from(std::iter::once("tlc-train".to_string()).chain(args)).map_err(|e| anyhow!("{}: {e}", path.display()))?.a;
    let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
    a.spec = a.spec.map(|s| abs(Path::new(&s)).display().to_string());
    a.weights = a.weights.as_deref().map(abs);
    a.data = a.data.as_deref().map(abs);
    a.out = Some(run.to_path_buf());
    a.resume = Some(run.to_path_buf());
    a.stop_after = now.stop_after;
    Ok(a)
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
        render::emit_stderr(&c.diagnostics, &c.sources, crate::compile::color());
    }
    c.graph.ok_or_else(|| anyhow!("the generated transfer spec does not compile (see above)"))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
}

/// `tlc train`.
pub fn train_cmd(a: TrainArgs) -> u8 {
    let a = match &a.resume {
        Some(run) => match saved_args(run, &a) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return 2;
            }
        },
        None => a,
    };
    let spec = a.spec.clone().unwrap_or_default();
    with_graph(&spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(graph: Graph, a: &TrainArgs) -> Result<()> {
    let (spec_arg, data, out) = match (&a.spec, &a.data, &a.out) {
        (Some(s), Some(d), Some(o)) => (s.as_str(), d.as_path(), o.as_path()),
        _ => bail!("give SPEC, --data and --out (or --resume RUN)"),
    };
    let freeze = Freeze::parse(&a.freeze)?;
    let fine_tune = match (a.fine_tune, &a.unfreeze) {
        (Some(epochs), Some(u)) => Some(FineTune { epochs, unfreeze: Unfreeze::parse(u)?, lr: a.fine_tune_lr }),
        (Some(_), None) => bail!("--fine-tune needs --unfreeze last:K or from:NODE"),
        (None, Some(_)) => bail!("--unfreeze needs --fine-tune EPOCHS"),
        (None, None) => None,
    };
    let schedule = Schedule::parse(&a.schedule)?;
    let (_, feature) = head_cut(&graph).map_err(|e| anyhow!(e))?;
    let rank = graph.node(feature).shape.as_ref().map(|s| s.len()).unwrap_or(1);
    let split = load_split(data, a.val_split, a.seed)?;
    if split.classes.len() < 2 {
        bail!("{} has {} class folder(s); at least 2 are needed", data.display(), split.classes.len());
    }
    eprintln!("data: {} classes {:?}, {} training and {} validation files", split.classes.len(), split.classes, split.train.len(), split.val.len());
    let chain = normalise_head(a.head.as_deref().unwrap_or(&default_head(rank)), split.classes.len(), rank);
    let spec_path = absolute(Path::new(spec_arg));
    let spec_dir = spec_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = std::fs::read_to_string(&spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    let import_path = |p: &str| -> String { if p.starts_with('/') { p.to_string() } else { spec_dir.join(p).display().to_string() } };
    let (yaml, scope) = transfer_spec(&text, &TransferSpec { labels: &split.classes, head_chain: &chain, variant: graph.meta.variant.as_deref(), import_path: &import_path }).map_err(|e| anyhow!("cannot cut {}: {e}", spec_arg))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if a.resume.is_none() {
        // The arguments, for --resume.
        let cwd = std::env::current_dir().unwrap_or_default();
        let args: Vec<String> = std::env::args().skip(2).collect();
        let v = serde_json::json!({"cwd": cwd.display().to_string(), "args": args});
        tlc_runtime::weights::write_atomic(&out.join("args.json"), serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    let model_path = absolute(out).join("model.yaml");
    let new_graph = compile_text(&model_path.display().to_string(), &yaml)?;
    let out_shape = new_graph.node(new_graph.output).shape.clone().unwrap_or_default();
    if out_shape != [split.classes.len()] {
        bail!("the new head outputs {:?} per image; it must output [{}] (end it with linear(classes), after pooling/flatten)", out_shape, split.classes.len());
    }
    eprintln!("head `{scope}`: {chain}  (feature: `{}` {:?})", graph.node(feature).name, graph.node(feature).shape.clone().unwrap_or_default());
    let Some(wpath) = weights_path(&graph, &a.hub.hub(), a.weights.as_deref())? else {
        bail!("give --weights PRETRAINED (the spec names no checkpoint)");
    };
    let weights = load_for_graph(&wpath, &graph)?;
    let optimizer = Kind::parse(&a.optimizer, a.momentum, a.nesterov)?;
    let cfg = Config {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        optimizer,
        weight_decay: a.weight_decay.unwrap_or(if optimizer == Kind::AdamW { 0.01 } else { 0.0 }),
        seed: a.seed,
        early_stopping: a.early_stopping,
        freeze,
        augment: !a.no_augment,
        fine_tune,
        train_bn: a.train_bn,
        schedule,
        reduce_on_plateau: a.reduce_lr_on_plateau,
        stop_after: a.stop_after,
    };
    let setup = Setup {
        graph: new_graph,
        head_scope: scope,
        weights,
        split,
        out: out.to_path_buf(),
        model_yaml: yaml,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        resume: a.resume.is_some(),
    };
    let dev = device(&a.device)?;
    // A progress bar per epoch on a terminal; the per-epoch lines either way.
    let tty = std::io::stderr().is_terminal();
    let bar_shown = std::cell::Cell::new(false);
    let mut log = |line: &str| {
        if bar_shown.replace(false) {
            eprint!("\r\x1b[K");
        }
        eprintln!("{line}");
    };
    let mut progress = |step: usize, steps: usize, loss: f64, acc: f64| {
        if tty {
            let width = 30;
            let done = step * width / steps.max(1);
            eprint!("\r  [{}{}] {step}/{steps}  loss {loss:.4}  accuracy {acc:.4}\x1b[K", "=".repeat(done), " ".repeat(width - done));
            bar_shown.set(true);
        }
    };
    let s = train(setup, &cfg, &dev, &mut log, &mut progress)?;
    if !s.complete {
        println!("stopped after epoch {}; continue with: tlc train --resume {}", s.epochs.last().map(|e| e.epoch).unwrap_or(0), out.display());
        return Ok(());
    }
    let phases: Vec<String> = s.phases.iter().map(|p| format!("{} {} epochs {:.2}s/epoch", p.name, p.epochs, p.seconds_per_epoch)).collect();
    println!(
        "best val_accuracy {:.4} at epoch {} ({} train / {} val images; {}; data {:.1}s, training {:.1}s, total {:.1}s) -> {}",
        s.best_val_accuracy,
        s.best_epoch,
        s.train_samples,
        s.val_samples,
        phases.join(", "),
        s.data_seconds,
        s.train_seconds,
        s.total_seconds,
        out.display()
    );
    Ok(())
}
