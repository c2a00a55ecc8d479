//! A training-mode forward pass over a subset of IR nodes: dropout and stochastic depth are
//! active, BatchNorm uses batch statistics for the nodes listed as trainable BN (and returns
//! updated running statistics); every other op is [`crate::exec::eval`], so gradients flow
//! through candle's autograd wherever its ops have a backward pass.

use super::rng::Rng;
use crate::exec::{self, ParamSource};
use anyhow::{anyhow, Context, Result};
use candle_core::{Tensor, D};
use std::collections::{HashMap, HashSet};
use tlc_compiler::ir::{Graph, NodeId, Op};

struct NodeParams<'a> {
    node: &'a str,
    params: &'a HashMap<String, Tensor>,
}

impl ParamSource for NodeParams<'_> {
    fn param(&self, suffix: &str) -> candle_core::Result<&Tensor> {
        let name = if suffix.is_empty() { self.node.to_string() } else { format!("{}.{suffix}", self.node) };
        self.params.get(&name).ok_or_else(|| candle_core::Error::Msg(format!("parameter `{name}` is not loaded")))
    }
    fn has(&self, suffix: &str) -> bool {
        let name = if suffix.is_empty() { self.node.to_string() } else { format!("{}.{suffix}", self.node) };
        self.params.contains_key(&name)
    }
}

/// How to run the nodes.
pub struct Mode<'a> {
    /// Training semantics (dropout active); inference otherwise.
    pub train: bool,
    /// BatchNorm nodes that use batch statistics in training.
    pub bn_train: &'a HashSet<NodeId>,
    /// BatchNorm momentum (PyTorch 0.1).
    pub bn_momentum: f64,
}

/// Runs `nodes` (in order) given the values of their outside inputs in `start`; returns the
/// value of `out` and the new running statistics of training-mode BatchNorm nodes.
pub fn run_nodes(g: &Graph, nodes: &[NodeId], start: &[(NodeId, Tensor)], params: &HashMap<String, Tensor>, out: NodeId, mode: &Mode, rng: &mut Rng) -> Result<(Tensor, Vec<(String, Tensor)>)> {
    let mut values: HashMap<NodeId, Tensor> = start.iter().cloned().collect();
    let mut stats = Vec::new();
    // Last reader of each value among `nodes`, to free intermediates early.
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for (k, &id) in nodes.iter().enumerate() {
        for i in &g.node(id).inputs {
            last.insert(*i, k);
        }
    }
    for (k, &id) in nodes.iter().enumerate() {
        let node = g.node(id);
        if node.inputs.is_empty() {
            continue;
        }
        let ins: Vec<Tensor> = node.inputs.iter().map(|i| values.get(i).cloned().ok_or_else(|| anyhow!("internal: no value for the input of `{}`", node.name))).collect::<Result<_>>()?;
        let p = NodeParams { node: &node.name, params };
        let x = &ins[0];
        let y = match &node.op {
            Op::Dropout { p: rate, stochastic_depth } if mode.train && *rate > 0.0 => {
                let keep = 1.0 - rate;
                let shape: Vec<usize> = if *stochastic_depth { std::iter::once(x.dim(0)?).chain(std::iter::repeat_n(1, x.rank() - 1)).collect() } else { x.dims().to_vec() };
                let n: usize = shape.iter().product();
                let m: Vec<f32> = (0..n).map(|_| if rng.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
                let mask = Tensor::from_vec(m, shape, x.device())?;
                x.broadcast_mul(&mask)?
            }
            Op::BatchNorm { eps } if mode.train && mode.bn_train.contains(&id) => {
                let (y, mean, var) = batch_norm_train(x, p.param("weight")?, p.param("bias")?, *eps)?;
                let m = mode.bn_momentum;
                let n = (x.elem_count() / x.dim(1)?) as f64;
                let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
                let rm = ((p.param("running_mean")? * (1.0 - m))? + (mean.detach() * m)?)?;
                let rv = ((p.param("running_var")? * (1.0 - m))? + (unbiased * m)?)?;
                stats.push((format!("{}.running_mean", node.name), rm));
                stats.push((format!("{}.running_var", node.name), rv));
                y
            }
            op => exec::eval(op, &ins, &p).with_context(|| format!("while running node `{}`", node.name))?,
        };
        values.insert(id, y);
        for i in &node.inputs {
            if last.get(i) == Some(&k) && *i != out {
                values.remove(i);
            }
        }
    }
    let y = values.remove(&out).ok_or_else(|| anyhow!("internal: the output node was not computed"))?;
    Ok((y, stats))
}

/// Differentiable BatchNorm with batch statistics over (N, H, W) on NCHW (or (N) on NC).
fn batch_norm_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let rank = x.rank();
    let mut shape = vec![1usize; rank];
    shape[1] = c;
    // Move channels last, flatten the rest.
    let xt = if rank > 2 { x.transpose(1, rank - 1)?.contiguous()?.reshape(((), c))? } else { x.clone() };
    let mean = xt.mean_keepdim(0)?;
    let diff = xt.broadcast_sub(&mean)?;
    let var = diff.sqr()?.mean_keepdim(0)?;
    let mean = mean.reshape(c)?;
    let var = var.reshape(c)?;
    let xm = x.broadcast_sub(&mean.reshape(shape.clone())?)?;
    let y = xm.broadcast_div(&(var.reshape(shape.clone())? + eps)?.sqrt()?)?;
    let y = y.broadcast_mul(&w.reshape(shape.clone())?)?.broadcast_add(&b.reshape(shape)?)?;
    let _ = D::Minus1;
    Ok((y, mean, var))
}
