//! The phases of a run and what each trains. A phase splits the graph into a frozen prefix
//! and the nodes it runs with gradients: the nodes with trained parameters (the new head,
//! the base from the phase's cut on, every train-mode BatchNorm) and everything downstream.

use super::config::{Config, Freeze, Unfreeze};
use anyhow::{bail, Result};
use std::collections::HashSet;
use tlc_compiler::ir::{Graph, NodeId, Op};

/// A planned phase.
pub(super) struct PhasePlan {
    /// `frozen`, `train` or `fine-tune`.
    pub name: &'static str,
    pub epochs: usize,
    pub lr: f64,
    /// Position of the first trained node of the base (`None`: the head only).
    pub cut: Option<usize>,
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

/// The phases `cfg` asks for: the first (`--freeze`), then fine-tuning (`--unfreeze`).
pub(super) fn plan_phases(g: &Graph, head: &HashSet<NodeId>, cfg: &Config) -> Result<Vec<PhasePlan>> {
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
pub(super) struct PhaseNodes {
    /// Parameters the optimizer updates.
    pub trainable: Vec<String>,
    /// BatchNorm nodes run with batch statistics.
    pub bn_train: HashSet<NodeId>,
    /// Nodes run with gradients, in order.
    pub run_list: Vec<NodeId>,
    /// Values of the frozen prefix they read.
    pub boundary: Vec<NodeId>,
    /// The phase trains part of the base (so training images may be augmented).
    pub base_trained: bool,
    /// First trained node of the base.
    pub first_trainable: Option<String>,
}

impl PhaseNodes {
    /// The nodes of a phase whose base is trained from position `cut` on (`None`: only the
    /// `head`); `train_bn`: every BatchNorm uses batch statistics.
    pub fn new(g: &Graph, head: &HashSet<NodeId>, cut: Option<usize>, train_bn: bool) -> PhaseNodes {
        let in_trained_base = |k: usize| cut.is_some_and(|c| k >= c);
        let mut trained_nodes: HashSet<NodeId> = HashSet::new();
        let mut trainable = Vec::new();
        let mut bn_train = HashSet::new();
        let mut first_trainable = None;
        for (k, (id, n)) in g.nodes().enumerate() {
            let has = n.params.iter().any(|p| p.trainable());
            let trained = head.contains(&id) || (in_trained_base(k) && has);
            if trained {
                trained_nodes.insert(id);
                trainable.extend(n.params.iter().filter(|p| p.trainable()).map(|p| p.name.clone()));
                if has && !head.contains(&id) && first_trainable.is_none() {
                    first_trainable = Some(n.name.clone());
                }
            }
            if matches!(n.op, Op::BatchNorm { .. }) && (trained || train_bn) && !n.params.is_empty() {
                trained_nodes.insert(id);
                bn_train.insert(id);
            }
        }
        let (run_list, boundary) = downstream(g, &trained_nodes);
        let base_trained = run_list.iter().any(|id| !head.contains(id));
        PhaseNodes { trainable, bn_train, run_list, boundary, base_trained, first_trainable }
    }

    /// Names of the parameters this phase changes: the trained ones and the running
    /// statistics of its train-mode BatchNorms.
    pub fn changed<'g>(&'g self, g: &'g Graph) -> impl Iterator<Item = &'g String> {
        self.trainable.iter().chain(self.bn_train.iter().flat_map(move |id| g.node(*id).params.iter().map(|p| &p.name)))
    }
}

/// The nodes to run (`trained` and everything that reads them, in order) and the outside
/// values they read.
fn downstream(g: &Graph, trained: &HashSet<NodeId>) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut in_run: HashSet<NodeId> = HashSet::new();
    let mut run_list = Vec::new();
    for (id, n) in g.nodes() {
        if trained.contains(&id) || n.inputs.iter().any(|i| in_run.contains(i)) {
            in_run.insert(id);
            run_list.push(id);
        }
    }
    let mut boundary = Vec::new();
    for id in &run_list {
        for i in &g.node(*id).inputs {
            if !in_run.contains(i) && !boundary.contains(i) {
                boundary.push(*i);
            }
        }
    }
    (run_list, boundary)
}
