//! The training loop of `tlc train`: a new head on a cut base, trained in one or two phases
//! (the head or the nodes from a cut on; then optionally fine-tuning from an earlier cut with
//! a low learning rate); learning-rate schedules, reduce-on-plateau, early stopping with
//! best-weights restore; checkpoints, an exact resume point, metrics, plots and summary.
//!
//! Each phase splits the graph into a frozen prefix and the nodes it trains: the nodes with
//! trainable parameters (and the new head, and every train-mode BatchNorm), plus everything
//! downstream of them. The frozen prefix runs without gradients on the optimized inference
//! path (folded BatchNorm, fast kernels); its outputs at the boundary are computed once and
//! cached when the training images are not augmented (always for validation), so a frozen
//! base costs one forward pass in all.

use super::checkpoint::save_with_metadata;
use super::data::{augment, load_decoded, load_prepared, par_map, threads, Skipped, Split};
use super::forward::{run_nodes, Mode};
use super::metrics::report;
use super::optim::{Kind, Optimizer};
use super::plot::{confusion_png, curves_png};
use super::rng::Rng;
use crate::model::init_param;
use crate::weights::{save_safetensors, write_atomic, Weights};
use crate::Model;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;
use tlc_compiler::ir::{Graph, NodeId, Op};
use tlc_compiler::surgery::head_nodes;

/// What the first phase trains.
#[derive(Clone, Debug, PartialEq)]
pub enum Freeze {
    /// Only the new head (base features computed once and cached).
    Base,
    /// Everything.
    None,
    /// Every node up to and including the node (or scope) named, trains the rest.
    Until(String),
}

impl Freeze {
    /// Parses `base`, `none` or `until:NODE`.
    pub fn parse(s: &str) -> Result<Freeze> {
        Ok(match s {
            "base" => Freeze::Base,
            "none" => Freeze::None,
            _ => match s.strip_prefix("until:") {
                Some(n) if !n.is_empty() => Freeze::Until(n.to_string()),
                _ => bail!("--freeze {s}: use base, none or until:NODE"),
            },
        })
    }
}

/// What fine-tuning unfreezes.
#[derive(Clone, Debug, PartialEq)]
pub enum Unfreeze {
    /// The last K parameterised nodes of the base (a conv, a BatchNorm, a linear layer each).
    Last(usize),
    /// The node (or scope) named and every node after it.
    From(String),
}

impl Unfreeze {
    /// Parses `last:K` or `from:NODE`.
    pub fn parse(s: &str) -> Result<Unfreeze> {
        if let Some(k) = s.strip_prefix("last:") {
            let k: usize = k.parse().map_err(|_| anyhow!("--unfreeze {s}: K must be a positive integer"))?;
            if k == 0 {
                bail!("--unfreeze last:0 unfreezes nothing");
            }
            return Ok(Unfreeze::Last(k));
        }
        match s.strip_prefix("from:") {
            Some(n) if !n.is_empty() => Ok(Unfreeze::From(n.to_string())),
            _ => bail!("--unfreeze {s}: use last:K or from:NODE"),
        }
    }
}

/// The fine-tuning phase.
#[derive(Clone, Debug)]
pub struct FineTune {
    /// Epochs.
    pub epochs: usize,
    /// What to unfreeze.
    pub unfreeze: Unfreeze,
    /// Its learning rate.
    pub lr: f64,
}

/// Learning-rate schedule within a phase (per epoch).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Multiplied by `gamma` every `every` epochs (PyTorch `StepLR`).
    Step { every: usize, gamma: f64 },
    /// Cosine annealing to 0 over the phase (PyTorch `CosineAnnealingLR`, `T_max` = epochs).
    Cosine,
}

impl Schedule {
    /// Parses `constant`, `step:EPOCHS:GAMMA` or `cosine`.
    pub fn parse(s: &str) -> Result<Schedule> {
        if s == "constant" || s == "none" {
            return Ok(Schedule::Constant);
        }
        if s == "cosine" {
            return Ok(Schedule::Cosine);
        }
        if let Some(rest) = s.strip_prefix("step:") {
            let mut it = rest.split(':');
            let every = it.next().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0);
            let gamma = it.next().and_then(|v| v.parse::<f64>().ok()).filter(|g| g.is_finite() && *g > 0.0);
            if let (Some(every), Some(gamma), None) = (every, gamma, it.next()) {
                return Ok(Schedule::Step { every, gamma });
            }
        }
        bail!("--schedule {s}: use step:EPOCHS:GAMMA (e.g. step:5:0.1), cosine or constant")
    }

    /// The factor of the phase's learning rate in its epoch `e` (0-based) of `epochs`.
    pub fn factor(&self, e: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => gamma.powi((e / every) as i32),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * e as f64 / epochs.max(1) as f64).cos()),
        }
    }
}

/// Hyper-parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// Epochs of the first phase.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate of the first phase.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: Kind,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of the head initialisation, shuffles, dropout and augmentation.
    pub seed: u64,
    /// Stop a phase after this many epochs without a lower validation loss, restoring the
    /// best weights (those of `best.safetensors`).
    pub early_stopping: Option<usize>,
    /// What the first phase trains.
    pub freeze: Freeze,
    /// Augment training images (random resized crop, flip) in phases that train part of the
    /// base; never with a frozen base (its features are cached).
    pub augment: bool,
    /// Fine-tuning after the first phase.
    pub fine_tune: Option<FineTune>,
    /// BatchNorm layers with frozen parameters use batch statistics and update their running
    /// statistics (otherwise they run in inference mode).
    pub train_bn: bool,
    /// Learning-rate schedule of each phase.
    pub schedule: Schedule,
    /// Multiply the learning rate by 0.1 when the validation loss has not improved for more
    /// than 2 epochs (PyTorch `ReduceLROnPlateau`: patience 2, relative threshold 1e-4).
    pub reduce_on_plateau: bool,
    /// Stop (as if interrupted) after this many epochs of this invocation; `--resume` continues.
    pub stop_after: Option<usize>,
}

/// What to train.
pub struct Setup {
    /// The compiled transfer spec (base + new head).
    pub graph: Graph,
    /// Scope of the new head (`head`).
    pub head_scope: String,
    /// Pretrained weights of the base (extra tensors such as the old classifier are ignored).
    pub weights: Weights,
    /// The data.
    pub split: Split,
    /// Output folder.
    pub out: PathBuf,
    /// Text of `model.yaml`.
    pub model_yaml: String,
    /// The command line, for the summary.
    pub command_line: String,
    /// Continue from `out/resume.safetensors`.
    pub resume: bool,
}

/// One epoch's numbers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Epoch {
    /// 1-based epoch (counted across phases).
    pub epoch: usize,
    /// `frozen` (head only), `train` or `fine-tune`.
    pub phase: String,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Learning rate.
    pub lr: f64,
    /// Seconds of the epoch.
    pub seconds: f64,
}

/// One phase of a run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PhaseInfo {
    /// `frozen`, `train` or `fine-tune`.
    pub name: String,
    /// First trained node of the base (none: only the head).
    pub first_trainable: Option<String>,
    /// Trainable parameters.
    pub trainable_parameters: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Stopped by early stopping (and restored the best weights).
    pub early_stopped: bool,
}

/// Result of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Best validation accuracy.
    pub best_val_accuracy: f64,
    /// Epoch of `best.safetensors` (1-based).
    pub best_epoch: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// The command line.
    pub command: String,
    /// Training and validation samples used.
    pub train_samples: usize,
    /// Validation samples used.
    pub val_samples: usize,
    /// Files skipped because they could not be decoded.
    pub skipped: Vec<String>,
    /// Seconds spent decoding images and computing cached features (this invocation).
    pub data_seconds: f64,
    /// Seconds spent training (all epochs, across resumes).
    pub train_seconds: f64,
    /// Total seconds of this invocation.
    pub total_seconds: f64,
    /// Whether the first phase had a frozen base (features cached).
    pub frozen_base: bool,
    /// The phases.
    pub phases: Vec<PhaseInfo>,
    /// Confusion matrix of `best.safetensors` on the validation set (rows: true class).
    pub confusion: Vec<Vec<usize>>,
    /// This invocation continued an interrupted run.
    pub resumed: bool,
    /// All phases ran to their end (false when stopped by `stop_after`).
    pub complete: bool,
    /// Per-epoch numbers.
    pub epochs: Vec<Epoch>,
}

/// Parameters of the transfer graph: the base from `weights`, the head initialised from `seed`.
pub fn initial_params(g: &Graph, head_scope: &str, weights: &Weights, seed: u64, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let prefix = format!("{head_scope}.");
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for p in g.params() {
        let t = if p.name.starts_with(&prefix) {
            init_param(&p.name, &p.shape, p.kind, seed, dev)?
        } else {
            match weights.get(&p.name) {
                Some(t) if t.dims() == p.shape.as_slice() => t.to_device(dev)?,
                Some(t) => bail!("weights: `{}` has shape {:?}, the spec expects {:?}", p.name, t.dims(), p.shape),
                None => {
                    missing.push(p.name.clone());
                    continue;
                }
            }
        };
        out.insert(p.name.clone(), t);
    }
    if !missing.is_empty() {
        bail!("the weights lack {} tensors of the base, e.g. {}", missing.len(), missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "));
    }
    Ok(out)
}

fn to_batch(items: &[&Vec<f32>], input: &[usize], dev: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(items.len() * items[0].len());
    for v in items {
        data.extend_from_slice(v);
    }
    Ok(Tensor::from_vec(data, (items.len(), input[0], input[1], input[2]), dev)?)
}

/// The frozen prefix of a phase: runs a model (optimized view when it holds the taps) without
/// gradients and returns the values of the boundary nodes.
struct Prefix {
    model: Model,
    fast: Option<crate::optimize::OptimizedModel>,
    taps: Vec<NodeId>,
    input: NodeId,
}

impl Prefix {
    fn new(g: &Graph, params: &HashMap<String, Tensor>, taps: Vec<NodeId>, dev: &Device) -> Result<Prefix> {
        let input = g.nodes().next().unwrap().0;
        let base = Weights::from_tensors(params.iter().map(|(k, v)| (k.clone(), v.detach())))?;
        let model = Model::from_weights(g.clone(), &base, false, dev)?;
        let fast = if taps.iter().all(|t| *t == input) { None } else { model.optimized().ok() };
        Ok(Prefix { model, fast, taps, input })
    }

    /// Boundary values of one batch of prepared images.
    fn run(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        if self.taps.iter().all(|t| *t == self.input) {
            return Ok(self.taps.iter().map(|_| x.clone()).collect());
        }
        let inner: Vec<NodeId> = self.taps.iter().copied().filter(|t| *t != self.input).collect();
        let vals = match self.fast.as_ref().map(|m| m.forward_with(x, &inner)) {
            Some(Ok((_, v))) => v,
            _ => self.model.forward_with(x, &inner)?.1,
        };
        let mut it = vals.into_iter();
        Ok(self.taps.iter().map(|t| if *t == self.input { x.clone() } else { it.next().unwrap().detach() }).collect())
    }

    /// Boundary values of many prepared images, concatenated per tap.
    fn run_all(&self, data: &[&Vec<f32>], dev: &Device) -> Result<Vec<Tensor>> {
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); self.taps.len()];
        for chunk in data.chunks(16) {
            let x = to_batch(chunk, &self.model.graph.meta.input, dev)?;
            for (k, v) in self.run(&x)?.into_iter().enumerate() {
                parts[k].push(v);
            }
        }
        parts.into_iter().map(|p| Ok(Tensor::cat(&p, 0)?)).collect()
    }
}

/// Computes the `feature` node's output for every prepared image, in batches of `batch`, on
/// the optimized inference path (folded BatchNorm, fast kernels) when it holds that node, on
/// the plain model otherwise.
pub fn features(model: &Model, feature: NodeId, data: &[&Vec<f32>], batch: usize) -> Result<Tensor> {
    let fast = model.optimized().ok();
    let mut parts = Vec::new();
    for chunk in data.chunks(batch.max(1)) {
        let x = to_batch(chunk, &model.graph.meta.input, &model.device)?;
        let f = match fast.as_ref().map(|m| m.forward_with(&x, &[feature])) {
            Some(Ok((_, f))) => f,
            _ => model.forward_with(&x, &[feature])?.1,
        };
        parts.push(f.into_iter().next().unwrap());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Position range of the nodes named `name` or inside scope `name`.
fn scope_range(g: &Graph, name: &str) -> Result<(usize, usize)> {
    let prefix = format!("{name}.");
    let hits: Vec<usize> = g.nodes().enumerate().filter(|(_, (_, n))| n.name == name || n.name.starts_with(&prefix)).map(|(k, _)| k).collect();
    match (hits.first(), hits.last()) {
        (Some(&a), Some(&b)) => Ok((a, b)),
        _ => bail!("`{name}` names no node or scope of the graph (see `tlc summary` for the names, e.g. `_blocks.15`)"),
    }
}

/// The planned phases: name, epochs, learning rate, first trained node position of the base
/// (`None`: the head only).
struct PhasePlan {
    name: &'static str,
    epochs: usize,
    lr: f64,
    cut: Option<usize>,
}

fn plan_phases(g: &Graph, head: &HashSet<NodeId>, cfg: &Config) -> Result<Vec<PhasePlan>> {
    let mut plans = Vec::new();
    let (name, cut) = match &cfg.freeze {
        Freeze::Base => ("frozen", None),
        Freeze::None => ("train", Some(0)),
        Freeze::Until(n) => ("train", Some(scope_range(g, n)?.1 + 1)),
    };
    plans.push(PhasePlan { name, epochs: cfg.epochs, lr: cfg.lr, cut });
    if let Some(ft) = &cfg.fine_tune {
        let cut = match &ft.unfreeze {
            Unfreeze::From(n) => scope_range(g, n)?.0,
            Unfreeze::Last(k) => {
                let with_params: Vec<usize> = g.nodes().enumerate().filter(|(_, (id, n))| !head.contains(id) && n.params.iter().any(|p| p.trainable())).map(|(k, _)| k).collect();
                if with_params.is_empty() {
                    bail!("the base has no parameters to unfreeze");
                }
                with_params[with_params.len().saturating_sub(*k)]
            }
        };
        plans.push(PhasePlan { name: "fine-tune", epochs: ft.epochs, lr: ft.lr, cut: Some(cut) });
    }
    Ok(plans)
}

/// What a phase runs and trains.
struct PhaseNodes {
    trainable: Vec<String>,
    bn_train: HashSet<NodeId>,
    run_list: Vec<NodeId>,
    boundary: Vec<NodeId>,
    /// The phase trains part of the base (so training images may be augmented).
    base_trained: bool,
    first_trainable: Option<String>,
}

fn phase_nodes(g: &Graph, head: &HashSet<NodeId>, cut: Option<usize>, train_bn: bool) -> PhaseNodes {
    let in_trained_base = |k: usize| cut.is_some_and(|c| k >= c);
    let mut t: HashSet<NodeId> = HashSet::new();
    let mut trainable = Vec::new();
    let mut bn_train = HashSet::new();
    let mut first_trainable = None;
    for (k, (id, n)) in g.nodes().enumerate() {
        let has = n.params.iter().any(|p| p.trainable());
        let trained = head.contains(&id) || (in_trained_base(k) && has);
        let is_bn = matches!(n.op, Op::BatchNorm { .. });
        if trained {
            t.insert(id);
            trainable.extend(n.params.iter().filter(|p| p.trainable()).map(|p| p.name.clone()));
            if has && !head.contains(&id) && first_trainable.is_none() {
                first_trainable = Some(n.name.clone());
            }
        }
        if is_bn && (trained || train_bn) && !n.params.is_empty() {
            t.insert(id);
            bn_train.insert(id);
        }
    }
    let mut in_r: HashSet<NodeId> = HashSet::new();
    let mut run_list = Vec::new();
    for (id, n) in g.nodes() {
        if t.contains(&id) || n.inputs.iter().any(|i| in_r.contains(i)) {
            in_r.insert(id);
            run_list.push(id);
        }
    }
    let mut boundary = Vec::new();
    for id in &run_list {
        for i in &g.node(*id).inputs {
            if !in_r.contains(i) && !boundary.contains(i) {
                boundary.push(*i);
            }
        }
    }
    let base_trained = run_list.iter().any(|id| !head.contains(id));
    PhaseNodes { trainable, bn_train, run_list, boundary, base_trained, first_trainable }
}

/// The saved training state (metadata `state` of `resume.safetensors`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct State {
    /// Phase in progress (index), and epochs it has completed.
    phase: usize,
    phase_epoch: usize,
    /// The phase has ended (all epochs, or early stopping).
    phase_done: bool,
    epoch: usize,
    rng: u64,
    opt_t: i32,
    plateau_scale: f64,
    plateau_best: f64,
    plateau_bad: usize,
    es_min_loss: f64,
    es_since: usize,
    best_acc: f64,
    best_loss: f64,
    best_epoch: usize,
    epochs: Vec<Epoch>,
    phases: Vec<PhaseInfo>,
    train_seconds: f64,
    /// Parameters that differ from their initial values (saved in the file).
    changed: Vec<String>,
    /// Trainable variables of the phase (order of the optimizer state).
    vars: Vec<String>,
}

const RESUME_FILE: &str = "resume.safetensors";

fn f64_or_inf(v: f64) -> f64 {
    if v.is_nan() {
        f64::INFINITY
    } else {
        v
    }
}

/// Trains; writes `model.yaml`, `best.safetensors`, `last.safetensors`, `resume.safetensors`,
/// `metrics.csv`, `curves.png`, `confusion.png` and `summary.json` into `setup.out`; `log` gets
/// the progress lines, `progress` (step, steps, mean loss, accuracy) each training step.
pub fn train(setup: Setup, cfg: &Config, dev: &Device, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(usize, usize, f64, f64)) -> Result<Summary> {
    let t0 = Instant::now();
    let g = &setup.graph;
    std::fs::create_dir_all(&setup.out).with_context(|| format!("cannot create {}", setup.out.display()))?;
    write_atomic(&setup.out.join("model.yaml"), setup.model_yaml.as_bytes())?;
    let (head_list, _feature) = head_nodes(g, &setup.head_scope).map_err(|e| anyhow!(e))?;
    let head: HashSet<NodeId> = head_list.iter().copied().collect();
    let initial = initial_params(g, &setup.head_scope, &setup.weights, cfg.seed, dev)?;
    let plans = plan_phases(g, &head, cfg)?;
    let nodes: Vec<PhaseNodes> = plans.iter().map(|p| phase_nodes(g, &head, p.cut, cfg.train_bn)).collect();
    let augments: Vec<bool> = nodes.iter().map(|n| cfg.augment && n.base_trained).collect();
    let input = g.meta.input.clone();
    let pre = g.meta.preprocess.clone();

    // Resume state.
    let mut params = initial.clone();
    let mut best_params = initial.clone();
    let mut opt_state: Option<(i32, HashMap<String, Tensor>)> = None;
    let mut state: Option<State> = None;
    if setup.resume {
        let path = setup.out.join(RESUME_FILE);
        let meta = super::checkpoint::read_metadata(&path).with_context(|| format!("nothing to resume in {}", setup.out.display()))?;
        let s: State = serde_json::from_str(meta.get("state").ok_or_else(|| anyhow!("{}: no training state", path.display()))?)?;
        if s.phase_done && s.phase + 1 >= plans.len() {
            bail!("{} is complete ({} epochs); nothing to resume", setup.out.display(), s.epoch);
        }
        let w = Weights::load(&path)?;
        for name in &s.changed {
            let get = |k: &str| w.get(k).cloned().ok_or_else(|| anyhow!("{}: `{k}` missing", path.display()));
            params.insert(name.clone(), get(&format!("param/{name}"))?.to_device(dev)?);
            best_params.insert(name.clone(), get(&format!("best/{name}"))?.to_device(dev)?);
        }
        let mut opt = HashMap::new();
        for name in &s.vars {
            for k in ["m", "v"] {
                if let Some(t) = w.get(&format!("{k}/{name}")) {
                    opt.insert(format!("{k}/{name}"), t.to_device(dev)?);
                }
            }
        }
        opt_state = Some((s.opt_t, opt));
        log(&format!("resuming {} after epoch {} (phase {}, {} of its epochs done)", setup.out.display(), s.epoch, plans[s.phase].name, s.phase_epoch));
        state = Some(s);
    }

    // Data: decoded images where a phase augments, prepared arrays where one does not.
    let td = Instant::now();
    let mut skipped: Vec<Skipped> = Vec::new();
    let (val_ok, bad) = load_prepared(&setup.split.val, &pre);
    skipped.extend(bad);
    let val_labels: Vec<usize> = val_ok.iter().map(|(s, _)| s.label).collect();
    let val_data: Vec<Vec<f32>> = val_ok.into_iter().map(|(_, d)| d).collect();
    let (train_decoded, train_prepared, train_labels) = if augments.iter().any(|a| *a) {
        let (ok, bad) = load_decoded(&setup.split.train);
        skipped.extend(bad);
        let labels: Vec<usize> = ok.iter().map(|(s, _)| s.label).collect();
        let imgs: Vec<image::DynamicImage> = ok.into_iter().map(|(_, d)| d).collect();
        let prepared = if augments.iter().any(|a| !*a) {
            par_map(&imgs, threads(), |i| crate::preprocess::preprocess(i, &pre).map(|p| p.data)).into_iter().collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        (imgs, prepared, labels)
    } else {
        let (ok, bad) = load_prepared(&setup.split.train, &pre);
        skipped.extend(bad);
        let labels: Vec<usize> = ok.iter().map(|(s, _)| s.label).collect();
        (Vec::new(), ok.into_iter().map(|(_, d)| d).collect(), labels)
    };
    for s in &skipped {
        log(&format!("warning: skipping {}: {}", s.path.display(), s.reason));
    }
    if train_labels.is_empty() || val_labels.is_empty() {
        bail!("no usable training or validation images");
    }
    log(&format!("data: {} training and {} validation images decoded in {:.1}s", train_labels.len(), val_labels.len(), td.elapsed().as_secs_f64()));
    let mut data_seconds = td.elapsed().as_secs_f64();

    let mut st = state.unwrap_or(State {
        phase: 0,
        phase_epoch: 0,
        phase_done: false,
        epoch: 0,
        rng: Rng::new(cfg.seed).state(),
        opt_t: 0,
        plateau_scale: 1.0,
        plateau_best: f64::INFINITY,
        plateau_bad: 0,
        es_min_loss: f64::INFINITY,
        es_since: 0,
        best_acc: -1.0,
        best_loss: f64::INFINITY,
        best_epoch: 0,
        epochs: Vec::new(),
        phases: Vec::new(),
        train_seconds: 0.0,
        changed: Vec::new(),
        vars: Vec::new(),
    });
    let resumed = setup.resume;
    let csv_path = setup.out.join("metrics.csv");
    let csv_of = |epochs: &[Epoch]| -> String {
        let mut csv = String::from("epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n");
        for e in epochs {
            csv.push_str(&format!("{},{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}\n", e.epoch, e.phase, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.lr, e.seconds));
        }
        csv
    };
    let save = |params: &HashMap<String, Tensor>, name: &str| -> Result<()> {
        let list: Vec<(String, Tensor)> = g.params().map(|p| (p.name.clone(), params[&p.name].detach())).collect();
        save_safetensors(&list, &setup.out.join(name))
    };
    let mut rng = Rng::from_state(st.rng);
    let mut epochs_this_run = 0usize;
    let mut stopped = false;
    let first_phase = if st.phase_done { st.phase + 1 } else { st.phase };

    for (pi, plan) in plans.iter().enumerate().skip(first_phase) {
        let pn = &nodes[pi];
        let aug = augments[pi];
        let fresh = !(resumed && pi == st.phase && !st.phase_done && opt_state.is_some());
        if fresh {
            // A new phase starts from the best weights so far (the first from the initial ones).
            if pi > 0 {
                params = best_params.clone();
            }
            st.phase = pi;
            st.phase_epoch = 0;
            st.phase_done = false;
            st.plateau_scale = 1.0;
            st.plateau_best = f64::INFINITY;
            st.plateau_bad = 0;
            st.es_min_loss = f64::INFINITY;
            st.es_since = 0;
            st.opt_t = 0;
            st.phases.push(PhaseInfo { name: plan.name.to_string(), first_trainable: pn.first_trainable.clone(), trainable_parameters: 0, epochs: 0, seconds_per_epoch: 0.0, early_stopped: false });
        }
        for name in pn.trainable.iter().chain(pn.bn_train.iter().flat_map(|id| g.node(*id).params.iter().map(|p| &p.name))) {
            if !st.changed.contains(name) {
                st.changed.push(name.clone());
            }
        }
        // Variables of this phase.
        for v in params.values_mut() {
            *v = v.detach();
        }
        let mut vars = Vec::new();
        for name in &pn.trainable {
            let v = Var::from_tensor(&params[name])?;
            params.insert(name.clone(), v.as_tensor().clone());
            vars.push(v);
        }
        let mut opt = Optimizer::new(cfg.optimizer, vars, plan.lr, cfg.weight_decay);
        if !fresh {
            let (t, saved) = opt_state.take().unwrap();
            let list = pn.trainable.iter().map(|n| (saved.get(&format!("m/{n}")).cloned(), saved.get(&format!("v/{n}")).cloned())).collect();
            opt.import(t, list)?;
        }
        st.vars = pn.trainable.clone();
        let trainable_count: usize = g.params().filter(|p| pn.trainable.contains(&p.name)).map(|p| p.numel()).sum();
        let frozen_count: usize = g.params().filter(|p| p.trainable() && !pn.trainable.contains(&p.name)).map(|p| p.numel()).sum();
        st.phases[pi].trainable_parameters = trainable_count;

        // Boundary values of the frozen prefix, cached where the images are not augmented.
        let tp = Instant::now();
        let prefix = Prefix::new(g, &params, pn.boundary.clone(), dev)?;
        let per_sample: usize = pn.boundary.iter().map(|b| g.node(*b).shape.as_ref().map(|s| s.iter().product::<usize>()).unwrap_or(0)).sum::<usize>() * 4;
        const CACHE_LIMIT: usize = 3 << 29; // 1.5 GiB per split
        let val_cache = if per_sample * val_labels.len() <= CACHE_LIMIT { Some(prefix.run_all(&val_data.iter().collect::<Vec<_>>(), dev)?) } else { None };
        let train_cache = if !aug && per_sample * train_labels.len() <= CACHE_LIMIT { Some(prefix.run_all(&train_prepared.iter().collect::<Vec<_>>(), dev)?) } else { None };
        let bnames: Vec<&str> = pn.boundary.iter().map(|b| g.node(*b).name.as_str()).collect();
        log(&format!(
            "phase {} ({}): {} epochs, lr {:e}; trains {} ({} parameters, {} frozen), {} BatchNorm in train mode; frozen prefix ends at {:?}{}{}",
            pi + 1,
            plan.name,
            plan.epochs,
            plan.lr,
            pn.first_trainable.as_deref().map(|n| format!("from `{n}` on")).unwrap_or_else(|| "the head".into()),
            trainable_count,
            frozen_count,
            pn.bn_train.len(),
            bnames,
            if train_cache.is_some() { "; training features cached" } else if aug { "; augmented training images" } else { "" },
            if val_cache.is_some() || train_cache.is_some() { format!(" ({:.1}s)", tp.elapsed().as_secs_f64()) } else { String::new() },
        ));
        data_seconds += tp.elapsed().as_secs_f64();
        let start_nodes = |vals: Vec<Tensor>| -> Vec<(NodeId, Tensor)> { pn.boundary.iter().copied().zip(vals).collect() };
        let gather = |cache: &[Tensor], idx: &[usize]| -> Result<Vec<Tensor>> {
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), dev)?;
            cache.iter().map(|c| Ok(c.index_select(&ids, 0)?)).collect()
        };
        let train_inputs = |idx: &[usize], rng: &mut Rng| -> Result<Vec<Tensor>> {
            if let Some(c) = &train_cache {
                return gather(c, idx);
            }
            let items: Vec<Vec<f32>> = if aug {
                let seeds: Vec<Rng> = idx.iter().map(|_| rng.fork()).collect();
                let jobs: Vec<(usize, Rng)> = idx.iter().copied().zip(seeds).collect();
                par_map(&jobs, threads(), |(i, r)| augment(&train_decoded[*i], &pre, &input, &mut r.clone())).into_iter().collect::<Result<_>>()?
            } else {
                idx.iter().map(|&i| train_prepared[i].clone()).collect()
            };
            prefix.run(&to_batch(&items.iter().collect::<Vec<_>>(), &input, dev)?)
        };
        let val_inputs = |idx: &[usize]| -> Result<Vec<Tensor>> {
            match &val_cache {
                Some(c) => gather(c, idx),
                None => prefix.run(&to_batch(&idx.iter().map(|&i| &val_data[i]).collect::<Vec<_>>(), &input, dev)?),
            }
        };
        let bn_train = &pn.bn_train;

        while st.phase_epoch < plan.epochs {
            if cfg.stop_after.is_some_and(|n| epochs_this_run >= n) {
                stopped = true;
                break;
            }
            let te = Instant::now();
            let epoch = st.epoch + 1;
            opt.lr = plan.lr * cfg.schedule.factor(st.phase_epoch, plan.epochs) * st.plateau_scale;
            let mut order: Vec<usize> = (0..train_labels.len()).collect();
            rng.shuffle(&mut order);
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let steps = order.len().div_ceil(cfg.batch.max(1));
            for (step, chunk) in order.chunks(cfg.batch.max(1)).enumerate() {
                let xs = train_inputs(chunk, &mut rng)?;
                let mode = Mode { train: true, bn_train, bn_momentum: 0.1 };
                let (logits, stats) = run_nodes(g, &pn.run_list, &start_nodes(xs), &params, g.output, &mode, &mut rng)?;
                let logits = logits.flatten_from(1)?;
                let y = Tensor::from_vec(chunk.iter().map(|&i| train_labels[i] as u32).collect::<Vec<_>>(), chunk.len(), dev)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    bail!("the training loss became {lv} at epoch {epoch}, step {} (learning rate {:e} too high?); stopping. best.safetensors holds epoch {}", step + 1, opt.lr, st.best_epoch);
                }
                let grads = loss.backward()?;
                opt.step(&grads)?;
                for (name, t) in stats {
                    params.insert(name, t.detach());
                }
                loss_sum += lv * chunk.len() as f64;
                correct += count_correct(&logits, chunk.iter().map(|&i| train_labels[i]))?;
                seen += chunk.len();
                progress(step + 1, steps, loss_sum / seen as f64, correct as f64 / seen as f64);
            }
            let n = train_labels.len() as f64;
            let (vloss, vacc) = evaluate(g, &pn.run_list, &start_nodes, &val_inputs, &params, &val_labels, cfg.batch, bn_train, dev, &mut rng)?;
            let e = Epoch { epoch, phase: plan.name.to_string(), loss: loss_sum / n, accuracy: correct as f64 / n, val_loss: vloss, val_accuracy: vacc, lr: opt.lr, seconds: te.elapsed().as_secs_f64() };
            log(&format!(
                "epoch {:>3}/{} {:<9} loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  lr {:.2e}  {:.2}s",
                e.epoch,
                plans.iter().map(|p| p.epochs).sum::<usize>(),
                plan.name,
                e.loss,
                e.accuracy,
                e.val_loss,
                e.val_accuracy,
                e.lr,
                e.seconds
            ));
            if e.val_accuracy > st.best_acc || (e.val_accuracy == st.best_acc && e.val_loss < st.best_loss) {
                st.best_acc = e.val_accuracy;
                st.best_loss = e.val_loss;
                st.best_epoch = epoch;
                best_params = snapshot(&params)?;
                save(&params, "best.safetensors")?;
            }
            // Reduce on plateau (PyTorch: relative threshold 1e-4, patience 2, factor 0.1).
            if cfg.reduce_on_plateau {
                if e.val_loss < st.plateau_best * (1.0 - 1e-4) {
                    st.plateau_best = e.val_loss;
                    st.plateau_bad = 0;
                } else {
                    st.plateau_bad += 1;
                    if st.plateau_bad > 2 {
                        st.plateau_scale *= 0.1;
                        st.plateau_bad = 0;
                        log(&format!("val_loss has not improved for 3 epochs: learning rate x 0.1 -> {:.2e}", plan.lr * cfg.schedule.factor(st.phase_epoch + 1, plan.epochs) * st.plateau_scale));
                    }
                }
            }
            let stop = if e.val_loss < st.es_min_loss {
                st.es_min_loss = e.val_loss;
                st.es_since = 0;
                false
            } else {
                st.es_since += 1;
                cfg.early_stopping.is_some_and(|p| st.es_since >= p)
            };
            st.epoch = epoch;
            st.phase_epoch += 1;
            st.train_seconds += e.seconds;
            st.epochs.push(e);
            let ph = &mut st.phases[pi];
            ph.epochs += 1;
            ph.seconds_per_epoch = st.epochs.iter().filter(|x| x.phase == plan.name).map(|x| x.seconds).sum::<f64>() / ph.epochs as f64;
            if stop {
                log(&format!("early stopping: no lower val_loss for {} epochs; restoring the weights of epoch {} (best.safetensors)", st.es_since, st.best_epoch));
                ph.early_stopped = true;
                params = best_params.clone();
                for v in params.values_mut() {
                    *v = v.detach();
                }
            }
            st.phase_done = stop || st.phase_epoch >= plan.epochs;
            st.rng = rng.state();
            // Outputs of the epoch; resume.safetensors last, as one atomic file.
            write_atomic(&csv_path, csv_of(&st.epochs).as_bytes())?;
            save(&params, "last.safetensors")?;
            if let Err(e) = curves_png(&st.epochs, &setup.out.join("curves.png")) {
                log(&format!("warning: curves.png: {e:#}"));
            }
            let (t, ostate) = opt.export();
            st.opt_t = t;
            save_resume(&setup.out.join(RESUME_FILE), &st, &params, &best_params, &pn.trainable, &ostate)?;
            epochs_this_run += 1;
            if stop {
                break;
            }
        }
        if stopped {
            break;
        }
    }

    let complete = !stopped;
    let mut confusion = Vec::new();
    if complete {
        // The confusion matrix of best.safetensors on the validation set, on the inference path.
        let model = Model::from_weights(g.clone(), &Weights::from_tensors(best_params.iter().map(|(k, v)| (k.clone(), v.detach())))?, false, dev)?;
        let fast = model.optimized().ok();
        let mut scores: Vec<Vec<f32>> = Vec::new();
        for chunk in val_data.chunks(32) {
            let x = to_batch(&chunk.iter().collect::<Vec<_>>(), &input, dev)?;
            let y = match fast.as_ref().map(|m| m.forward(&x)) {
                Some(Ok(y)) => y,
                _ => model.forward(&x)?,
            };
            scores.extend(y.flatten_from(1)?.to_vec2::<f32>()?);
        }
        let r = report(&scores, &val_labels, setup.split.classes.len());
        confusion = r.confusion.clone();
        if (r.accuracy - st.best_acc).abs() > 1e-9 {
            log(&format!("note: best.safetensors scores {:.4} on the inference path (training measured {:.4})", r.accuracy, st.best_acc));
        }
        if let Err(e) = confusion_png(&confusion, &setup.split.classes, &setup.out.join("confusion.png")) {
            log(&format!("warning: confusion.png: {e:#}"));
        }
    } else {
        log(&format!("stopped after {epochs_this_run} epochs as asked; continue with --resume {}", setup.out.display()));
    }
    let summary = Summary {
        best_val_accuracy: st.best_acc,
        best_epoch: st.best_epoch,
        classes: setup.split.classes.clone(),
        command: setup.command_line.clone(),
        train_samples: train_labels.len(),
        val_samples: val_labels.len(),
        skipped: skipped.iter().map(|s| s.path.display().to_string()).collect(),
        data_seconds,
        train_seconds: st.train_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
        frozen_base: cfg.freeze == Freeze::Base,
        phases: st.phases.clone(),
        confusion,
        resumed,
        complete,
        epochs: st.epochs.clone(),
    };
    if complete {
        write_atomic(&setup.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    Ok(summary)
}

/// Mean loss and accuracy on the validation set (inference semantics).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    g: &Graph,
    run_list: &[NodeId],
    start_nodes: &dyn Fn(Vec<Tensor>) -> Vec<(NodeId, Tensor)>,
    val_inputs: &dyn Fn(&[usize]) -> Result<Vec<Tensor>>,
    params: &HashMap<String, Tensor>,
    labels: &[usize],
    batch: usize,
    bn_train: &HashSet<NodeId>,
    dev: &Device,
    rng: &mut Rng,
) -> Result<(f64, f64)> {
    let (mut vloss, mut vcorrect) = (0f64, 0usize);
    let all: Vec<usize> = (0..labels.len()).collect();
    for chunk in all.chunks(batch.max(32)) {
        let mode = Mode { train: false, bn_train, bn_momentum: 0.1 };
        let (logits, _) = run_nodes(g, run_list, &start_nodes(val_inputs(chunk)?), params, g.output, &mode, rng)?;
        let logits = logits.flatten_from(1)?.detach();
        let y = Tensor::from_vec(chunk.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>(), chunk.len(), dev)?;
        vloss += candle_nn::loss::cross_entropy(&logits, &y)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
        vcorrect += count_correct(&logits, chunk.iter().map(|&i| labels[i]))?;
    }
    let n = labels.len() as f64;
    Ok((f64_or_inf(vloss / n), vcorrect as f64 / n))
}

/// Writes the resume point: the changed parameters (current and best), the optimizer state
/// and the training state, in one atomic file.
fn save_resume(path: &std::path::Path, st: &State, params: &HashMap<String, Tensor>, best: &HashMap<String, Tensor>, vars: &[String], opt: &[super::optim::VarState]) -> Result<()> {
    let mut list: Vec<(String, Tensor)> = Vec::new();
    for name in &st.changed {
        list.push((format!("param/{name}"), params[name].detach()));
        list.push((format!("best/{name}"), best[name].detach()));
    }
    for (name, (m, v)) in vars.iter().zip(opt) {
        if let Some(m) = m {
            list.push((format!("m/{name}"), m.detach()));
        }
        if let Some(v) = v {
            list.push((format!("v/{name}"), v.detach()));
        }
    }
    let meta: HashMap<String, String> = [("state".to_string(), serde_json::to_string(st)?)].into_iter().collect();
    save_with_metadata(&list, meta, path)
}

/// Deep copies of `params` (a variable's tensor shares its storage with the variable, which
/// the optimizer overwrites in place).
fn snapshot(params: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    params.iter().map(|(k, v)| Ok((k.clone(), v.detach().copy()?))).collect()
}

fn count_correct(logits: &Tensor, labels: impl Iterator<Item = usize>) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| **p as usize == *l).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::parse("step:2:0.5").unwrap(), Schedule::Step { every: 2, gamma: 0.5 });
        let s = Schedule::Step { every: 2, gamma: 0.5 };
        assert_eq!((0..5).map(|e| s.factor(e, 5)).collect::<Vec<_>>(), vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        let c = Schedule::parse("cosine").unwrap();
        assert!((c.factor(0, 4) - 1.0).abs() < 1e-12 && (c.factor(2, 4) - 0.5).abs() < 1e-12);
        assert!(Schedule::parse("step:0:0.1").is_err() && Schedule::parse("linear").is_err());
        assert_eq!(Unfreeze::parse("last:3").unwrap(), Unfreeze::Last(3));
        assert_eq!(Unfreeze::parse("from:_blocks.15").unwrap(), Unfreeze::From("_blocks.15".into()));
        assert_eq!(Freeze::parse("until:_blocks.3").unwrap(), Freeze::Until("_blocks.3".into()));
        assert!(Freeze::parse("until:").is_err() && Unfreeze::parse("last:0").is_err());
    }
}
