//! What a run reports: the per-epoch numbers, the phases, the summary (`summary.json`), the
//! progress lines, and the final confusion matrix of the best weights on the inference path.

use super::callbacks::Params;
use super::data::Skipped;
use super::evaluate::predict;
use super::metrics::{report, Report};
use crate::weights::Weights;
use crate::Model;
use anyhow::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use tlc_compiler::ir::Graph;

/// One epoch's numbers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize)]
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

/// The progress line of an epoch (`total`: epochs of all phases).
pub fn epoch_line(e: &Epoch, total: usize) -> String {
    format!(
        "epoch {:>3}/{} {:<9} loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  lr {:.2e}  {:.2}s",
        e.epoch, total, e.phase, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.lr, e.seconds
    )
}

/// How a phase is set up, for its progress line.
pub struct PhaseLine<'a> {
    /// 0-based phase index.
    pub index: usize,
    /// Phase name.
    pub name: &'a str,
    /// Epochs.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// First trained node of the base (none: the head).
    pub first_trainable: Option<&'a str>,
    /// Parameters trained.
    pub trainable: usize,
    /// Learnable parameters kept frozen.
    pub frozen: usize,
    /// BatchNorm nodes in train mode.
    pub bn_train: usize,
    /// Names of the frozen prefix's boundary nodes.
    pub boundary: Vec<&'a str>,
    /// The frozen prefix's values of the training images are cached.
    pub train_cached: bool,
    /// Training images augmented.
    pub augmented: bool,
    /// Seconds spent on caches, when any was computed.
    pub cache_seconds: Option<f64>,
}

/// The progress line of a phase's set-up.
pub fn phase_line(p: &PhaseLine) -> String {
    format!(
        "phase {} ({}): {} epochs, lr {:e}; trains {} ({} parameters, {} frozen), {} BatchNorm in train mode; frozen prefix ends at {:?}{}{}",
        p.index + 1,
        p.name,
        p.epochs,
        p.lr,
        p.first_trainable.map(|n| format!("from `{n}` on")).unwrap_or_else(|| "the head".into()),
        p.trainable,
        p.frozen,
        p.bn_train,
        p.boundary,
        if p.train_cached { "; training features cached" } else if p.augmented { "; augmented training images" } else { "" },
        p.cache_seconds.map(|s| format!(" ({s:.1}s)")).unwrap_or_default(),
    )
}

/// Accuracy and confusion matrix of `params` on prepared validation images, on the
/// inference path ([`Model::infer`]), as `tlc eval` of `best.safetensors` measures them.
pub fn final_report(g: &Graph, params: &Params, val: &[Vec<f32>], labels: &[usize], classes: usize, dev: &Device) -> Result<Report> {
    let weights = Weights::from_tensors(params.iter().map(|(k, v)| (k.clone(), v.detach())))?;
    let model = Model::from_weights(g.clone(), &weights, false, dev)?;
    let data: Vec<&[f32]> = val.iter().map(|v| v.as_slice()).collect();
    let scores = predict(&model, &data, 32)?;
    Ok(report(&scores, labels, classes))
}

/// The names of skipped files, for the summary.
pub fn skipped_names(skipped: &[Skipped]) -> Vec<String> {
    skipped.iter().map(|s| s.path.display().to_string()).collect()
}
