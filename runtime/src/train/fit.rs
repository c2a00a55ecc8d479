//! The training loop of `tlc train`: a new head on a cut base, frozen (features computed once
//! and cached) or trained end to end with augmentation; checkpoints, metrics and summary.

use super::data::{augment, load_decoded, load_prepared, Skipped, Split};
use super::forward::{run_nodes, Mode};
use super::optim::{Kind, Optimizer};
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

/// Hyper-parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// Epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: Kind,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of the head initialisation, shuffles, dropout and augmentation.
    pub seed: u64,
    /// Stop after this many epochs without a lower validation loss.
    pub early_stopping: Option<usize>,
    /// Freeze everything but the new head (its features are computed once and cached).
    pub freeze_base: bool,
    /// Augment training images (random resized crop, flip); only without a frozen base.
    pub augment: bool,
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
}

/// One epoch's numbers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Epoch {
    /// 1-based epoch.
    pub epoch: usize,
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
    /// Seconds spent decoding images and computing cached features.
    pub data_seconds: f64,
    /// Seconds spent training (all epochs).
    pub train_seconds: f64,
    /// Total seconds.
    pub total_seconds: f64,
    /// Whether the base was frozen (features cached).
    pub frozen_base: bool,
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

enum Data {
    Cached { train: Tensor, val: Tensor },
    Images { train: Vec<image::DynamicImage>, val: Vec<Vec<f32>> },
}

/// Trains; writes `model.yaml`, `best.safetensors`, `last.safetensors`, `metrics.csv` and
/// `summary.json` into `setup.out`; `log` gets the progress lines.
pub fn train(setup: Setup, cfg: &Config, dev: &Device, log: &mut dyn FnMut(&str)) -> Result<Summary> {
    let t0 = Instant::now();
    let g = &setup.graph;
    std::fs::create_dir_all(&setup.out).with_context(|| format!("cannot create {}", setup.out.display()))?;
    write_atomic(&setup.out.join("model.yaml"), setup.model_yaml.as_bytes())?;
    let (head, feature) = head_nodes(g, &setup.head_scope).map_err(|e| anyhow!(e))?;
    let mut params = initial_params(g, &setup.head_scope, &setup.weights, cfg.seed, dev)?;
    let prefix = format!("{}.", setup.head_scope);
    let trainable: Vec<String> = g.params().filter(|p| p.trainable() && (!cfg.freeze_base || p.name.starts_with(&prefix))).map(|p| p.name.clone()).collect();
    let mut vars = Vec::new();
    for name in &trainable {
        let v = Var::from_tensor(&params[name])?;
        params.insert(name.clone(), v.as_tensor().clone());
        vars.push(v);
    }
    let frozen_count: usize = g.params().filter(|p| p.trainable() && !trainable.contains(&p.name)).map(|p| p.numel()).sum();
    let trainable_count: usize = g.params().filter(|p| trainable.contains(&p.name)).map(|p| p.numel()).sum();
    log(&format!("{} classes {:?}; {} trainable parameters, {} frozen", setup.split.classes.len(), setup.split.classes, trainable_count, frozen_count));
    let bn_train: HashSet<NodeId> = g.nodes().filter(|(_, n)| matches!(n.op, Op::BatchNorm { .. }) && n.params.iter().any(|p| trainable.contains(&p.name))).map(|(i, _)| i).collect();
    let input = g.meta.input.clone();
    let pre = g.meta.preprocess.clone();

    // Data.
    let td = Instant::now();
    let mut skipped: Vec<Skipped> = Vec::new();
    let (val_ok, bad) = load_prepared(&setup.split.val, &pre);
    skipped.extend(bad);
    let val_labels: Vec<usize> = val_ok.iter().map(|(s, _)| s.label).collect();
    let (data, train_labels) = if cfg.freeze_base {
        let (train_ok, bad) = load_prepared(&setup.split.train, &pre);
        skipped.extend(bad);
        warn_skipped(&skipped, log);
        log(&format!("decoded {} training and {} validation images in {:.1}s; computing base features once (frozen base)", train_ok.len(), val_ok.len(), td.elapsed().as_secs_f64()));
        let base = Weights::from_tensors(params.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        let model = Model::from_weights(g.clone(), &base, false, dev)?;
        let tr = features(&model, feature, &train_ok.iter().map(|(_, d)| d).collect::<Vec<_>>(), 16)?;
        let va = features(&model, feature, &val_ok.iter().map(|(_, d)| d).collect::<Vec<_>>(), 16)?;
        (Data::Cached { train: tr, val: va }, train_ok.iter().map(|(s, _)| s.label).collect::<Vec<_>>())
    } else {
        let (train_ok, bad) = load_decoded(&setup.split.train);
        skipped.extend(bad);
        warn_skipped(&skipped, log);
        let labels = train_ok.iter().map(|(s, _)| s.label).collect::<Vec<_>>();
        (Data::Images { train: train_ok.into_iter().map(|(_, d)| d).collect(), val: val_ok.into_iter().map(|(_, d)| d).collect() }, labels)
    };
    if train_labels.is_empty() || val_labels.is_empty() {
        bail!("no usable training or validation images");
    }
    let data_seconds = td.elapsed().as_secs_f64();
    log(&format!("data ready in {data_seconds:.1}s"));

    // The nodes each step runs.
    let run_list: Vec<NodeId> = match data {
        Data::Cached { .. } => head.clone(),
        Data::Images { .. } => g.nodes().map(|(i, _)| i).collect(),
    };
    let start_node = match data {
        Data::Cached { .. } => feature,
        Data::Images { .. } => g.nodes().next().unwrap().0,
    };
    let mut rng = Rng::new(cfg.seed);
    let mut opt = Optimizer::new(cfg.optimizer, vars, cfg.lr, cfg.weight_decay);
    let csv_path = setup.out.join("metrics.csv");
    let mut csv = String::from("epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n");
    let (mut best_acc, mut best_loss, mut best_epoch) = (-1.0f64, f64::INFINITY, 0usize);
    let mut min_val_loss = f64::INFINITY;
    let mut since_better = 0usize;
    let mut epochs = Vec::new();
    let tt = Instant::now();
    let save = |params: &HashMap<String, Tensor>, name: &str| -> Result<()> {
        let list: Vec<(String, Tensor)> = g.params().map(|p| (p.name.clone(), params[&p.name].detach())).collect();
        save_safetensors(&list, &setup.out.join(name))
    };
    let logits_of = |params: &HashMap<String, Tensor>, idx: &[usize], train: bool, rng: &mut Rng| -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let x = match &data {
            Data::Cached { train: tr, val } => {
                let src = if train { tr } else { val };
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), dev)?;
                src.index_select(&ids, 0)?
            }
            Data::Images { train: tr, val } => {
                if train {
                    let mut items = Vec::new();
                    for &i in idx {
                        items.push(if cfg.augment { augment(&tr[i], &pre, &input, rng)? } else { crate::preprocess::preprocess(&tr[i], &pre)?.data });
                    }
                    to_batch(&items.iter().collect::<Vec<_>>(), &input, dev)?
                } else {
                    to_batch(&idx.iter().map(|&i| &val[i]).collect::<Vec<_>>(), &input, dev)?
                }
            }
        };
        let mode = Mode { train, bn_train: &bn_train, bn_momentum: 0.1 };
        run_nodes(g, &run_list, &[(start_node, x)], params, g.output, &mode, rng)
    };
    for epoch in 1..=cfg.epochs {
        let te = Instant::now();
        let mut order: Vec<usize> = (0..train_labels.len()).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for (step, chunk) in order.chunks(cfg.batch.max(1)).enumerate() {
            let (logits, stats) = logits_of(&params, chunk, true, &mut rng)?;
            let logits = logits.flatten_from(1)?;
            let y = Tensor::from_vec(chunk.iter().map(|&i| train_labels[i] as u32).collect::<Vec<_>>(), chunk.len(), dev)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                bail!("the training loss became {lv} at epoch {epoch}, step {} (learning rate {} too high?); stopping. best.safetensors holds epoch {best_epoch}", step + 1, opt.lr);
            }
            let grads = loss.backward()?;
            opt.step(&grads)?;
            for (name, t) in stats {
                params.insert(name, t.detach());
            }
            loss_sum += lv * chunk.len() as f64;
            correct += count_correct(&logits, chunk.iter().map(|&i| train_labels[i]))?;
        }
        let n = train_labels.len() as f64;
        // Validation.
        let (mut vloss, mut vcorrect) = (0f64, 0usize);
        let all: Vec<usize> = (0..val_labels.len()).collect();
        for chunk in all.chunks(cfg.batch.max(1).max(32)) {
            let (logits, _) = logits_of(&params, chunk, false, &mut rng)?;
            let logits = logits.flatten_from(1)?.detach();
            let y = Tensor::from_vec(chunk.iter().map(|&i| val_labels[i] as u32).collect::<Vec<_>>(), chunk.len(), dev)?;
            vloss += candle_nn::loss::cross_entropy(&logits, &y)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
            vcorrect += count_correct(&logits, chunk.iter().map(|&i| val_labels[i]))?;
        }
        let nv = val_labels.len() as f64;
        let e = Epoch { epoch, loss: loss_sum / n, accuracy: correct as f64 / n, val_loss: vloss / nv, val_accuracy: vcorrect as f64 / nv, lr: opt.lr, seconds: te.elapsed().as_secs_f64() };
        log(&format!(
            "epoch {:>3}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  lr {:.2e}  {:.2}s",
            e.epoch, cfg.epochs, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.lr, e.seconds
        ));
        csv.push_str(&format!("{},{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}\n", e.epoch, if cfg.freeze_base { "frozen" } else { "train" }, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.lr, e.seconds));
        write_atomic(&csv_path, csv.as_bytes())?;
        if e.val_accuracy > best_acc || (e.val_accuracy == best_acc && e.val_loss < best_loss) {
            best_acc = e.val_accuracy;
            best_loss = e.val_loss;
            best_epoch = epoch;
            save(&params, "best.safetensors")?;
        }
        save(&params, "last.safetensors")?;
        let stop = if e.val_loss < min_val_loss {
            min_val_loss = e.val_loss;
            since_better = 0;
            false
        } else {
            since_better += 1;
            cfg.early_stopping.is_some_and(|p| since_better >= p)
        };
        epochs.push(e);
        if stop {
            log(&format!("early stopping: no lower val_loss for {since_better} epochs; best.safetensors is epoch {best_epoch}"));
            break;
        }
    }
    let summary = Summary {
        best_val_accuracy: best_acc,
        best_epoch,
        classes: setup.split.classes.clone(),
        command: setup.command_line.clone(),
        train_samples: train_labels.len(),
        val_samples: val_labels.len(),
        skipped: skipped.iter().map(|s| s.path.display().to_string()).collect(),
        data_seconds,
        train_seconds: tt.elapsed().as_secs_f64(),
        total_seconds: t0.elapsed().as_secs_f64(),
        frozen_base: cfg.freeze_base,
        epochs,
    };
    write_atomic(&setup.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

fn warn_skipped(skipped: &[Skipped], log: &mut dyn FnMut(&str)) {
    for s in skipped {
        log(&format!("warning: skipping {}: {}", s.path.display(), s.reason));
    }
}

fn count_correct(logits: &Tensor, labels: impl Iterator<Item = usize>) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| **p as usize == *l).count())
}
