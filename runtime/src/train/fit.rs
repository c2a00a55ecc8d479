//! The training loop of `tlc train`: a new head on a cut base, trained in one or two phases
//! (the head or the nodes from a cut on; then optionally fine-tuning from an earlier cut with
//! a low learning rate). Each epoch is trained ([`super::epoch`]) and validated
//! ([`super::evaluate`]), then the callbacks ([`super::callbacks`]: best checkpoint,
//! reduce-on-plateau, early stopping, metrics.csv, curves.png) decide what comes next, and
//! last.safetensors and the resume point ([`super::resume`]) are written.

use super::callbacks::{save_params, Callback, Control, CsvLogger, EpochEnd, ModelCheckpoint, Params, Plots};
use super::config::{Config, Freeze, Request};
use super::data::Split;
use super::epoch::{train_epoch, Trainee};
use super::evaluate::validate;
use super::inputs::{Images, PhaseInputs};
use super::optim::Optimizer;
use super::phase::{plan_phases, PhaseNodes, PhasePlan};
use super::plot::confusion_png;
use super::report::{epoch_line, final_report, phase_line, skipped_names, PhaseLine};
use super::resume::{ResumePoint, State};
use crate::model::init_param;
use crate::rng::Rng;
use crate::weights::{write_atomic, Weights};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tlc_compiler::ir::{Graph, NodeId};
use tlc_compiler::surgery::head_nodes;

pub use super::report::{Epoch, PhaseInfo, Summary};

/// What to train: made by [`super::prepare::prepare`] from a [`Request`].
pub struct Setup {
    /// The request (saved as `config.json`).
    pub request: Request,
    /// The compiled transfer spec (base + new head).
    pub graph: Graph,
    /// Scope of the new head (`head`).
    pub head_scope: String,
    /// Pretrained weights of the base (extra tensors such as the old classifier are ignored).
    pub weights: Weights,
    /// The data.
    pub split: Split,
    /// Text of `model.yaml`.
    pub model_yaml: String,
    /// The command line, for the summary.
    pub command_line: String,
    /// Continue from `out/resume.safetensors`.
    pub resume: bool,
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

/// Trains; writes `config.json` (unless resuming), `model.yaml`, `best.safetensors`,
/// `last.safetensors`, `resume.safetensors`, `metrics.csv`, `curves.png`, `confusion.png` and
/// `summary.json` into the request's output folder; `log` gets the progress lines,
/// `progress` (step, steps, mean loss, accuracy) each training step.
pub fn train(setup: Setup, dev: &Device, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(usize, usize, f64, f64)) -> Result<Summary> {
    let t0 = Instant::now();
    let mut run = Run::start(&setup, dev, log)?;
    let images = run.load_images(log)?;
    let mut complete = true;
    for index in run.first_phase()..run.plans.len() {
        if !run.phase(index, &images, log, progress)? {
            complete = false;
            break;
        }
    }
    run.finish(&images, complete, t0, log)
}

/// A run in progress: its plan, state, weights and callbacks.
struct Run<'a> {
    setup: &'a Setup,
    cfg: &'a Config,
    g: &'a Graph,
    dev: &'a Device,
    plans: Vec<PhasePlan>,
    nodes: Vec<PhaseNodes>,
    augments: Vec<bool>,
    state: State,
    params: Params,
    checkpoint: ModelCheckpoint,
    csv: CsvLogger,
    plots: Plots,
    resume: ResumePoint,
    rng: Rng,
    /// The optimizer's steps and buffers of the phase a resumed run continues.
    opt_state: Option<(i32, HashMap<String, Tensor>)>,
    epochs_this_run: usize,
    data_seconds: f64,
}

impl<'a> Run<'a> {
    /// Writes `config.json` and `model.yaml`, plans the phases and reads the resume point.
    fn start(setup: &'a Setup, dev: &'a Device, log: &mut dyn FnMut(&str)) -> Result<Run<'a>> {
        let (cfg, g, out) = (&setup.request.config, &setup.graph, &setup.request.out);
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        if !setup.resume {
            setup.request.save()?;
        }
        write_atomic(&out.join("model.yaml"), setup.model_yaml.as_bytes())?;
        let (head_list, _feature) = head_nodes(g, &setup.head_scope).map_err(|e| anyhow!(e))?;
        let head: HashSet<NodeId> = head_list.iter().copied().collect();
        let plans = plan_phases(g, &head, cfg)?;
        let nodes: Vec<PhaseNodes> = plans.iter().map(|p| PhaseNodes::new(g, &head, p.cut, cfg.train_bn)).collect();
        let augments: Vec<bool> = nodes.iter().map(|n| cfg.augment && n.base_trained).collect();
        let mut params = initial_params(g, &setup.head_scope, &setup.weights, cfg.seed, dev)?;
        let mut best = params.clone();
        let resume = ResumePoint { path: out.join("resume.safetensors") };
        let (state, opt_state) = if setup.resume {
            let r = resume.load(dev)?;
            if r.state.phase_done && r.state.phase + 1 >= plans.len() {
                bail!("{} is complete ({} epochs); nothing to resume", out.display(), r.state.epoch);
            }
            params.extend(r.params);
            best.extend(r.best);
            log(&format!("resuming {} after epoch {} (phase {}, {} of its epochs done)", out.display(), r.state.epoch, plans[r.state.phase].name, r.state.phase_epoch));
            (r.state, Some(r.opt))
        } else {
            (State::new(cfg), None)
        };
        let names: Vec<String> = g.params().map(|p| p.name.clone()).collect();
        let checkpoint = ModelCheckpoint::new(Some(out.join("best.safetensors")), names, state.best, best);
        let rng = Rng::from_state(state.rng);
        Ok(Run {
            setup,
            cfg,
            g,
            dev,
            plans,
            nodes,
            augments,
            state,
            params,
            checkpoint,
            csv: CsvLogger { path: out.join("metrics.csv") },
            plots: Plots { curves: out.join("curves.png") },
            resume,
            rng,
            opt_state,
            epochs_this_run: 0,
            data_seconds: 0.0,
        })
    }

    /// Decodes the images (decoded for phases that augment, prepared for the others).
    fn load_images(&mut self, log: &mut dyn FnMut(&str)) -> Result<Images> {
        let decoding = Instant::now();
        let images = Images::load(&self.setup.split, &self.g.meta.preprocess, &self.augments)?;
        for s in &images.skipped {
            log(&format!("warning: skipping {}: {}", s.path.display(), s.reason));
        }
        if images.train_labels.is_empty() || images.val_labels.is_empty() {
            bail!("no usable training or validation images");
        }
        log(&format!("data: {} training and {} validation images decoded in {:.1}s", images.train_labels.len(), images.val_labels.len(), decoding.elapsed().as_secs_f64()));
        self.data_seconds = decoding.elapsed().as_secs_f64();
        Ok(images)
    }

    fn first_phase(&self) -> usize {
        if self.state.phase_done {
            self.state.phase + 1
        } else {
            self.state.phase
        }
    }

    fn stop_asked(&self) -> bool {
        self.cfg.stop_after.is_some_and(|n| self.epochs_this_run >= n)
    }

    /// Runs phase `index` (or the rest of it); false when stopped by `stop_after`.
    fn phase(&mut self, index: usize, images: &Images, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(usize, usize, f64, f64)) -> Result<bool> {
        if self.stop_asked() {
            return Ok(false);
        }
        let resumed_inside = index == self.state.phase && !self.state.phase_done && self.opt_state.is_some();
        if !resumed_inside {
            self.begin_phase(index);
        }
        let mut opt = self.optimizer(index, resumed_inside)?;
        let caching = Instant::now();
        let inputs = PhaseInputs::new(self.g, &self.params, &self.nodes[index].boundary, self.augments[index], images, self.dev)?;
        log(&self.phase_line(index, &inputs, caching.elapsed().as_secs_f64()));
        self.data_seconds += caching.elapsed().as_secs_f64();
        while self.state.phase_epoch < self.plans[index].epochs {
            if self.stop_asked() {
                return Ok(false);
            }
            if self.epoch(index, &inputs, &mut opt, log, progress)? {
                break;
            }
        }
        Ok(true)
    }

    /// A phase starts afresh: from the best weights so far (the first from the initial
    /// ones), with the callbacks reset.
    fn begin_phase(&mut self, index: usize) {
        if index > 0 {
            self.params = self.checkpoint.params().clone();
        }
        let state = &mut self.state;
        (state.phase, state.phase_epoch, state.phase_done, state.lr_scale, state.opt_t) = (index, 0, false, 1.0, 0);
        if let Some(p) = state.plateau.as_mut() {
            p.phase_begin();
        }
        if let Some(e) = state.early_stopping.as_mut() {
            e.phase_begin();
        }
        let first_trainable = self.nodes[index].first_trainable.clone();
        state.phases.push(PhaseInfo { name: self.plans[index].name.to_string(), first_trainable, trainable_parameters: 0, epochs: 0, seconds_per_epoch: 0.0, early_stopped: false });
    }

    /// The phase's variables and optimizer (with the saved state when resuming inside it).
    fn optimizer(&mut self, index: usize, resumed_inside: bool) -> Result<Optimizer> {
        let nodes = &self.nodes[index];
        for name in nodes.changed(self.g) {
            if !self.state.changed.contains(name) {
                self.state.changed.push(name.clone());
            }
        }
        for v in self.params.values_mut() {
            *v = v.detach();
        }
        let mut vars = Vec::new();
        for name in &nodes.trainable {
            let v = Var::from_tensor(&self.params[name])?;
            self.params.insert(name.clone(), v.as_tensor().clone());
            vars.push(v);
        }
        let mut opt = Optimizer::new(self.cfg.optimizer, vars, self.plans[index].lr, self.cfg.weight_decay);
        if let (true, Some((t, saved))) = (resumed_inside, self.opt_state.take()) {
            let list = nodes.trainable.iter().map(|v| (saved.get(&format!("m/{v}")).cloned(), saved.get(&format!("v/{v}")).cloned())).collect();
            opt.import(t, list)?;
        }
        self.state.vars = nodes.trainable.clone();
        self.state.phases[index].trainable_parameters = self.g.params().filter(|p| nodes.trainable.contains(&p.name)).map(|p| p.numel()).sum();
        Ok(opt)
    }

    fn phase_line(&self, index: usize, inputs: &PhaseInputs, seconds: f64) -> String {
        let (plan, nodes, g) = (&self.plans[index], &self.nodes[index], self.g);
        let (train_cached, val_cached) = inputs.cached();
        phase_line(&PhaseLine {
            index,
            name: plan.name,
            epochs: plan.epochs,
            lr: plan.lr,
            first_trainable: nodes.first_trainable.as_deref(),
            trainable: self.state.phases[index].trainable_parameters,
            frozen: g.params().filter(|p| p.trainable() && !nodes.trainable.contains(&p.name)).map(|p| p.numel()).sum(),
            bn_train: nodes.bn_train.len(),
            boundary: nodes.boundary.iter().map(|b| g.node(*b).name.as_str()).collect(),
            train_cached,
            augmented: self.augments[index],
            cache_seconds: (train_cached || val_cached).then_some(seconds),
        })
    }

    /// One epoch of phase `index` with its callbacks and outputs; true when the phase stops.
    fn epoch(&mut self, index: usize, inputs: &PhaseInputs, opt: &mut Optimizer, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(usize, usize, f64, f64)) -> Result<bool> {
        let started = Instant::now();
        let plan = &self.plans[index];
        let epoch = self.state.epoch + 1;
        opt.lr = plan.lr * self.cfg.schedule.factor(self.state.phase_epoch, plan.epochs) * self.state.lr_scale;
        let trainee = Trainee { g: self.g, nodes: &self.nodes[index], inputs, batch: self.cfg.batch };
        let best_epoch = self.checkpoint.best().map_or(0, |b| b.epoch);
        let stats = train_epoch(&trainee, &mut self.params, opt, &mut self.rng, (epoch, best_epoch), progress)?;
        let (val_loss, val_accuracy) = validate(self.g, &self.nodes[index], inputs, &self.params, self.cfg.batch, &mut self.rng)?;
        let e = Epoch { epoch, phase: plan.name.to_string(), loss: stats.loss, accuracy: stats.accuracy, val_loss, val_accuracy, lr: opt.lr, seconds: started.elapsed().as_secs_f64() };
        log(&epoch_line(&e, self.plans.iter().map(|p| p.epochs).sum()));
        self.record(index, e);
        let control = self.callbacks(log)?;
        self.apply(index, control, log);
        self.state.phase_done = control.stop || self.state.phase_epoch >= self.plans[index].epochs;
        self.state.rng = self.rng.state();
        // The epoch's weights, then the resume point last.
        save_params(&self.param_names(), &self.params, &self.setup.request.out.join("last.safetensors"))?;
        let (t, ostate) = opt.export();
        self.state.opt_t = t;
        self.state.best = self.checkpoint.best();
        self.resume.save(&self.state, &self.params, self.checkpoint.params(), &self.nodes[index].trainable, &ostate)?;
        self.epochs_this_run += 1;
        Ok(control.stop)
    }

    /// Parameter names in `state_dict` order (the order of the saved files).
    fn param_names(&self) -> Vec<String> {
        self.g.params().map(|p| p.name.clone()).collect()
    }

    /// Adds the epoch to the history and its phase's numbers.
    fn record(&mut self, index: usize, e: Epoch) {
        let state = &mut self.state;
        state.epoch = e.epoch;
        state.phase_epoch += 1;
        state.train_seconds += e.seconds;
        let name = e.phase.clone();
        state.epochs.push(e);
        let info = &mut state.phases[index];
        info.epochs += 1;
        info.seconds_per_epoch = state.epochs.iter().filter(|x| x.phase == name).map(|x| x.seconds).sum::<f64>() / info.epochs as f64;
    }

    /// Every callback's answer to the last epoch, combined.
    fn callbacks(&mut self, log: &mut dyn FnMut(&str)) -> Result<Control> {
        let state = &mut self.state;
        let end = EpochEnd { epoch: state.epochs.last().expect("an epoch was recorded"), history: &state.epochs, params: &self.params };
        let mut control = self.checkpoint.epoch_end(&end, log)?;
        if let Some(p) = state.plateau.as_mut() {
            control = control.and(p.epoch_end(&end, log)?);
        }
        if let Some(e) = state.early_stopping.as_mut() {
            control = control.and(e.epoch_end(&end, log)?);
        }
        control = control.and(self.csv.epoch_end(&end, log)?);
        Ok(control.and(self.plots.epoch_end(&end, log)?))
    }

    /// Applies the callbacks' answer: a lower learning rate, the best weights back.
    fn apply(&mut self, index: usize, control: Control, log: &mut dyn FnMut(&str)) {
        let plan = &self.plans[index];
        if control.lr_scale != 1.0 {
            self.state.lr_scale *= control.lr_scale;
            let bad = self.state.plateau.as_ref().map_or(0, |p| p.patience + 1);
            let next = plan.lr * self.cfg.schedule.factor(self.state.phase_epoch, plan.epochs) * self.state.lr_scale;
            log(&format!("val_loss has not improved for {bad} epochs: learning rate x {} -> {next:.2e}", control.lr_scale));
        }
        if control.stop {
            self.state.phases[index].early_stopped = true;
        }
        if control.restore_best {
            let wait = self.state.early_stopping.as_ref().map_or(0, |e| e.wait());
            let best = self.checkpoint.best().map_or(0, |b| b.epoch);
            log(&format!("early stopping: no lower val_loss for {wait} epochs; restoring the weights of epoch {best} (best.safetensors)"));
            self.params = self.checkpoint.params().iter().map(|(k, v)| (k.clone(), v.detach())).collect();
        }
    }

    /// The confusion matrix of the best weights (a complete run), `summary.json`, the summary.
    fn finish(self, images: &Images, complete: bool, t0: Instant, log: &mut dyn FnMut(&str)) -> Result<Summary> {
        let (setup, state, out) = (self.setup, &self.state, &self.setup.request.out);
        let best = self.checkpoint.best();
        let best_accuracy = best.map_or(-1.0, |b| b.accuracy);
        let mut confusion = Vec::new();
        if complete {
            let r = final_report(self.g, self.checkpoint.params(), &images.val, &images.val_labels, setup.split.classes.len(), self.dev)?;
            confusion = r.confusion.clone();
            if (r.accuracy - best_accuracy).abs() > 1e-9 {
                log(&format!("note: best.safetensors scores {:.4} on the inference path (training measured {:.4})", r.accuracy, best_accuracy));
            }
            if let Err(e) = confusion_png(&confusion, &setup.split.classes, &out.join("confusion.png")) {
                log(&format!("warning: confusion.png: {e:#}"));
            }
        } else {
            log(&format!("stopped after {} epochs as asked; continue with --resume {}", self.epochs_this_run, out.display()));
        }
        let summary = Summary {
            best_val_accuracy: best_accuracy,
            best_epoch: best.map_or(0, |b| b.epoch),
            classes: setup.split.classes.clone(),
            command: setup.command_line.clone(),
            train_samples: images.train_labels.len(),
            val_samples: images.val_labels.len(),
            skipped: skipped_names(&images.skipped),
            data_seconds: self.data_seconds,
            train_seconds: state.train_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
            frozen_base: self.cfg.freeze == Freeze::Base,
            phases: state.phases.clone(),
            confusion,
            resumed: setup.resume,
            complete,
            epochs: state.epochs.clone(),
        };
        if complete {
            write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
        }
        Ok(summary)
    }
}
