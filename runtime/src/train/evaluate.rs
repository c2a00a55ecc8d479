//! Measuring a model: the validation loss and accuracy of a phase (training graph, inference
//! semantics), class scores and features on the inference path ([`Model::infer`]), and
//! `tlc eval` on a folder of class subfolders.

use super::data::{batch, load_prepared, scan, val_folder, Skipped};
use super::forward::{run_nodes, Mode};
use super::inputs::PhaseInputs;
use super::metrics::{report, Report};
use super::phase::PhaseNodes;
use crate::rng::Rng;
use crate::Model;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tlc_compiler::ir::{Graph, Labels, NodeId};

/// Mean validation loss (a NaN becomes infinity) and accuracy of `params` on a phase's
/// trained nodes, in inference mode.
pub(super) fn validate(g: &Graph, nodes: &PhaseNodes, inputs: &PhaseInputs, params: &HashMap<String, Tensor>, batch: usize, rng: &mut Rng) -> Result<(f64, f64)> {
    let labels = inputs.val_labels();
    let (mut loss, mut correct) = (0f64, 0usize);
    let all: Vec<usize> = (0..labels.len()).collect();
    for chunk in all.chunks(batch.max(32)) {
        let mode = Mode { train: false, bn_train: &nodes.bn_train, bn_momentum: 0.1 };
        let (logits, _) = run_nodes(g, &nodes.run_list, &inputs.val(chunk)?, params, g.output, &mode, rng)?;
        let logits = logits.flatten_from(1)?.detach();
        let y = class_tensor(chunk.iter().map(|&i| labels[i]), inputs.device())?;
        loss += candle_nn::loss::cross_entropy(&logits, &y)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
        correct += count_correct(&logits, chunk.iter().map(|&i| labels[i]))?;
    }
    let n = labels.len() as f64;
    let loss = loss / n;
    Ok((if loss.is_nan() { f64::INFINITY } else { loss }, correct as f64 / n))
}

/// Labels as a `u32` tensor.
pub(super) fn class_tensor(labels: impl Iterator<Item = usize>, dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = labels.map(|l| l as u32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// How many rows of `logits` have their largest value at the label.
pub(super) fn count_correct(logits: &Tensor, labels: impl Iterator<Item = usize>) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| **p as usize == *l).count())
}

/// The model's outputs (flattened per image) for prepared images, in batches of `batch`.
pub fn predict(model: &Model, data: &[&[f32]], batch_size: usize) -> Result<Vec<Vec<f32>>> {
    let mut scores = Vec::with_capacity(data.len());
    for chunk in data.chunks(batch_size.max(1)) {
        let (y, _) = model.infer(&batch(chunk, &model.graph.meta.input, &model.device)?, &[])?;
        scores.extend(y.flatten_from(1)?.to_vec2::<f32>()?);
    }
    Ok(scores)
}

/// The values of `taps` for prepared images, in batches of `batch`, concatenated per tap
/// (on the CPU).
pub fn features(model: &Model, data: &[&[f32]], taps: &[NodeId], batch_size: usize) -> Result<Vec<Tensor>> {
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); taps.len()];
    for chunk in data.chunks(batch_size.max(1)) {
        let (_, values) = model.infer(&batch(chunk, &model.graph.meta.input, &model.device)?, taps)?;
        for (k, t) in values.into_iter().enumerate() {
            parts[k].push(t.to_device(&Device::Cpu)?);
        }
    }
    parts.iter().map(|p| Ok(Tensor::cat(p, 0)?)).collect()
}

/// A classifier measured on a folder (`tlc eval`).
pub struct Evaluation {
    /// The folder of class subfolders that was read.
    pub folder: PathBuf,
    /// Class names (the spec's labels when it lists them, else the folder names).
    pub classes: Vec<String>,
    /// Images scored.
    pub samples: usize,
    /// Files that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// The metrics, from softmax scores.
    pub report: Report,
}

/// Scores `model` on `data` (a folder of class subfolders, or a dataset root with `val/` or
/// `validation/`) in batches of `batch`.
pub fn evaluate_folder(model: &Model, data: &Path, batch_size: usize) -> Result<Evaluation> {
    let folder = val_folder(data).unwrap_or_else(|| data.to_path_buf());
    let labels = match &model.graph.meta.labels {
        Labels::List(l) => Some(l.clone()),
        _ => None,
    };
    let (classes, samples) = scan(&folder, labels.as_deref())?;
    let (ok, skipped) = load_prepared(&samples, &model.graph.meta.preprocess);
    if let (true, Some(s)) = (ok.is_empty(), skipped.first()) {
        bail!("no usable images in {} ({} skipped, e.g. {}: {})", folder.display(), skipped.len(), s.path.display(), s.reason);
    }
    if ok.is_empty() {
        bail!("no usable images in {}", folder.display());
    }
    let data: Vec<&[f32]> = ok.iter().map(|(_, d)| d.as_slice()).collect();
    let mut scores = Vec::with_capacity(data.len());
    for logits in predict(model, &data, batch_size)? {
        let n = logits.len();
        scores.extend(candle_nn::ops::softmax(&Tensor::from_vec(logits, (1, n), &Device::Cpu)?, 1)?.to_vec2::<f32>()?);
    }
    if scores[0].len() < classes.len() {
        bail!("the model has {} outputs but the data has {} classes", scores[0].len(), classes.len());
    }
    let labels: Vec<usize> = ok.iter().map(|(s, _)| s.label).collect();
    let report = report(&scores, &labels, classes.len());
    Ok(Evaluation { folder, classes, samples: labels.len(), skipped, report })
}
