//! `tlc train`: transfer learning from the command line. The arguments become a
//! [`Request`]; preparing it and the loop are in `tlc_runtime::train`.

use crate::compile::with_graph;
use crate::run::device;
use anyhow::{bail, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use tlc_compiler::ir::Graph;
use tlc_runtime::train::callbacks::ReduceLROnPlateau;
use tlc_runtime::train::config::{Config, FineTune, Freeze, Request, Schedule, Unfreeze};
use tlc_runtime::train::fit::train;
use tlc_runtime::train::optim::Kind;
use tlc_runtime::train::prepare::prepare;

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
    /// Multiply the learning rate by FACTOR (default 0.1) when val_loss has not improved
    /// (by a relative 1e-4) for more than PATIENCE epochs (default 10): PyTorch's
    /// ReduceLROnPlateau and its defaults. `--reduce-lr-on-plateau` alone, or `=PATIENCE[:FACTOR]`.
    #[arg(long, value_name = "PATIENCE[:FACTOR]", num_args = 0..=1, require_equals = true, default_missing_value = "10")]
    pub reduce_lr_on_plateau: Option<String>,
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
    /// Continue the interrupted run in RUN with its original settings (RUN/config.json).
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs of this invocation, as if interrupted (for tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `tlc train`.
pub fn train_cmd(a: TrainArgs) -> u8 {
    let request = match request(&a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let spec = request.spec.display().to_string();
    let variant = request.variant.clone();
    with_graph(&spec, variant.as_deref(), |g| run(g, request, &a))
}

/// The request: the saved one with `--resume` (and this invocation's `--stop-after`), else
/// the arguments.
fn request(a: &TrainArgs) -> Result<Request> {
    if let Some(run) = &a.resume {
        let mut r = Request::load(run)?;
        r.config.stop_after = a.stop_after;
        return Ok(r);
    }
    let (Some(spec), Some(data), Some(out)) = (&a.spec, &a.data, &a.out) else {
        bail!("give SPEC, --data and --out (or --resume RUN)");
    };
    let fine_tune = match (a.fine_tune, &a.unfreeze) {
        (Some(epochs), Some(u)) => Some(FineTune { epochs, unfreeze: Unfreeze::parse(u)?, lr: a.fine_tune_lr }),
        (Some(_), None) => bail!("--fine-tune needs --unfreeze last:K or from:NODE"),
        (None, Some(_)) => bail!("--unfreeze needs --fine-tune EPOCHS"),
        (None, None) => None,
    };
    let optimizer = Kind::parse(&a.optimizer, a.momentum, a.nesterov)?;
    let config = Config {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        optimizer,
        weight_decay: a.weight_decay.unwrap_or(optimizer.default_weight_decay()),
        seed: a.seed,
        early_stopping: a.early_stopping,
        freeze: Freeze::parse(&a.freeze)?,
        augment: !a.no_augment,
        fine_tune,
        train_bn: a.train_bn,
        schedule: Schedule::parse(&a.schedule)?,
        reduce_lr_on_plateau: a.reduce_lr_on_plateau.as_deref().map(ReduceLROnPlateau::parse).transpose()?,
        stop_after: a.stop_after,
    };
    Ok(Request {
        spec: PathBuf::from(spec),
        variant: a.variant.clone(),
        weights: a.weights.clone(),
        data: data.clone(),
        out: out.clone(),
        head: a.head.clone(),
        val_split: a.val_split,
        device: a.device.clone(),
        config,
    })
}

fn run(graph: Graph, request: Request, a: &TrainArgs) -> Result<()> {
    let dev = device(&request.device)?;
    let out = request.out.clone();
    // A progress bar per epoch on a terminal; the progress lines either way.
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
    let mut setup = prepare(request, &graph, &a.hub.hub(), &mut log)?;
    setup.command_line = std::env::args().collect::<Vec<_>>().join(" ");
    setup.resume = a.resume.is_some();
    let s = train(setup, &dev, &mut log, &mut progress)?;
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
