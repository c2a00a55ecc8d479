//! One training epoch of a phase: shuffled mini-batches through the trained nodes, cross
//! entropy, backward pass, optimizer step, new BatchNorm running statistics.

use super::callbacks::Params;
use super::evaluate::{class_tensor, count_correct};
use super::forward::{run_nodes, Mode};
use super::inputs::PhaseInputs;
use super::optim::Optimizer;
use super::phase::PhaseNodes;
use crate::rng::Rng;
use anyhow::{bail, Result};
use candle_core::DType;
use tlc_compiler::ir::Graph;

/// Mean loss and accuracy of a finished epoch.
pub(super) struct EpochStats {
    pub loss: f64,
    pub accuracy: f64,
}

/// What an epoch trains: the graph, a phase's nodes and their inputs.
pub(super) struct Trainee<'a> {
    pub g: &'a Graph,
    pub nodes: &'a PhaseNodes,
    pub inputs: &'a PhaseInputs<'a>,
    pub batch: usize,
}

/// Trains one epoch (1-based `epoch`; `best_epoch` for the message when the loss diverges);
/// `progress` gets (step, steps, mean loss, accuracy) after each step.
pub(super) fn train_epoch(
    t: &Trainee,
    params: &mut Params,
    opt: &mut Optimizer,
    rng: &mut Rng,
    (epoch, best_epoch): (usize, usize),
    progress: &mut dyn FnMut(usize, usize, f64, f64),
) -> Result<EpochStats> {
    let labels = t.inputs.train_labels();
    let mut order: Vec<usize> = (0..labels.len()).collect();
    rng.shuffle(&mut order);
    let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
    let batch = t.batch.max(1);
    let steps = order.len().div_ceil(batch);
    for (step, chunk) in order.chunks(batch).enumerate() {
        let xs = t.inputs.train(chunk, rng)?;
        let mode = Mode { train: true, bn_train: &t.nodes.bn_train, bn_momentum: 0.1 };
        let (logits, stats) = run_nodes(t.g, &t.nodes.run_list, &xs, params, t.g.output, &mode, rng)?;
        let logits = logits.flatten_from(1)?;
        let y = class_tensor(chunk.iter().map(|&i| labels[i]), t.inputs.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !lv.is_finite() {
            bail!("the training loss became {lv} at epoch {epoch}, step {} (learning rate {:e} too high?); stopping. best.safetensors holds epoch {best_epoch}", step + 1, opt.lr);
        }
        opt.step(&loss.backward()?)?;
        for (name, t) in stats {
            params.insert(name, t.detach());
        }
        loss_sum += lv * chunk.len() as f64;
        correct += count_correct(&logits, chunk.iter().map(|&i| labels[i]))?;
        seen += chunk.len();
        progress(step + 1, steps, loss_sum / seen as f64, correct as f64 / seen as f64);
    }
    let n = labels.len() as f64;
    Ok(EpochStats { loss: loss_sum / n, accuracy: correct as f64 / n })
}
