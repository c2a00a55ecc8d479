//! A training-mode forward pass over a subset of IR nodes: dropout and stochastic depth are
//! active, BatchNorm uses batch statistics for the nodes listed as trainable BN (and returns
//! updated running statistics); every other op is [`crate::exec::eval`], so gradients flow
//! through candle's autograd wherever its ops have a backward pass.

use crate::rng::Rng;
use crate::exec::{self, NodeParams, ParamSource};
use anyhow::{anyhow, Context, Result};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
use tlc_compiler::ir::{Graph, NodeId, Op};

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
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    //! Finite-difference gradient checks of the training forward pass on the ops that
    //! EfficientNet-Lite's last blocks use (1x1 conv, depthwise conv with "same" padding at
    //! stride 1 and 2, BatchNorm in train and inference mode, ReLU6, residual add, global
    //! average pooling, linear), in f64 so central differences are accurate.
    use super::*;
    use candle_core::{DType, Device, Var};
    use tlc_compiler::span::MemoryLoader;

    const SPEC: &str = r#"name: gradcheck
input: [3, 9, 9]
blocks:
  mbconv(c, k, s, t, hidden=in_channels * t):
    if: s == 1 and in_channels == c
    then:
      residual: &layers
        - _expand_conv: conv(hidden, k=1, bias=false)
        - _bn0: bn(eps=1e-3)
        - relu6
        - _depthwise_conv: conv(hidden, k=k, s=s, p="same", groups=hidden, bias=false)
        - _bn1: bn(eps=1e-3)
        - relu6
        - _project_conv: conv(c, k=1, bias=false)
        - _bn2: bn(eps=1e-3)
    else: *layers
graph:
  - _blocks:
      - mbconv(4, k=5, s=2, t=2)
      - mbconv(4, k=3, s=1, t=3)
  - _conv_head: conv(6, k=1, bias=false)
  - _bn1: bn(eps=1e-3)
  - relu6
  - global_avgpool
  - flatten
  - _fc: linear(3)
"#;

    fn graph() -> Graph {
        let loader = MemoryLoader([("g.yaml".to_string(), SPEC.to_string())].into_iter().collect());
        let c = tlc_compiler::compile("g.yaml", &loader, &tlc_compiler::Options::default());
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>());
        c.graph.unwrap()
    }

    fn loss(g: &Graph, params: &HashMap<String, Tensor>, x: &Tensor, r: &Tensor, bn_train: &HashSet<NodeId>) -> Tensor {
        let nodes: Vec<NodeId> = g.nodes().map(|(i, _)| i).collect();
        let input = nodes[0];
        let mode = Mode { train: true, bn_train, bn_momentum: 0.1 };
        let (y, _) = run_nodes(g, &nodes, &[(input, x.clone())], params, g.output, &mode, &mut Rng::new(0)).unwrap();
        (y * r).unwrap().sum_all().unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f64>().unwrap()
    }

    #[test]
    fn gradients_match_finite_differences_on_lite_blocks() {
        let g = graph();
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let mut rand = |n: usize, lo: f64, hi: f64| -> Vec<f64> { (0..n).map(|_| rng.range(lo, hi)).collect() };
        // Every BatchNorm in train mode except the head's (a frozen BN in inference mode), so
        // both paths are checked; a train-mode BN after it would make the loss invariant to
        // per-channel shifts and zero the gradients of the biases before it.
        let bn_train: HashSet<NodeId> = g.nodes().filter(|(_, n)| matches!(n.op, Op::BatchNorm { .. }) && n.name != "_bn1").map(|(i, _)| i).collect();
        assert_eq!(bn_train.len(), 6);
        let mut vars: Vec<(String, Var)> = Vec::new();
        let mut params: HashMap<String, Tensor> = HashMap::new();
        for p in g.params() {
            let n = p.numel();
            let v = match p.kind {
                tlc_compiler::ir::ParamKind::RunningVar => rand(n, 0.5, 1.5),
                tlc_compiler::ir::ParamKind::RunningMean => rand(n, -0.3, 0.3),
                _ if p.name.contains("bn") && p.name.ends_with("weight") => rand(n, 0.5, 1.5),
                _ => rand(n, -0.6, 0.6),
            };
            let t = Tensor::from_vec(v, p.shape.as_slice(), &dev).unwrap();
            if p.trainable() {
                let var = Var::from_tensor(&t).unwrap();
                params.insert(p.name.clone(), var.as_tensor().clone());
                vars.push((p.name.clone(), var));
            } else {
                params.insert(p.name.clone(), t);
            }
        }
        let x = Var::from_vec(rand(3 * 3 * 9 * 9, -1.5, 1.5), (3, 3, 9, 9), &dev).unwrap();
        let r = Tensor::from_vec(rand(3 * 3, -1.0, 1.0), (3, 3), &dev).unwrap();
        let l = loss(&g, &params, x.as_tensor(), &r, &bn_train);
        assert_eq!(l.dtype(), DType::F64);
        let grads = l.backward().unwrap();
        vars.push(("input".to_string(), x.clone()));
        let eps = 1e-6;
        let mut checked = 0;
        for (name, var) in &vars {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for `{name}`"));
            let an: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
            assert!(an.iter().any(|v| v.abs() > 1e-9), "`{name}`: gradient is all zero");
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.as_tensor().dims().to_vec();
            let picks: Vec<usize> = if base.len() <= 6 { (0..base.len()).collect() } else { (0..6).map(|k| (k * 7919 + 13) % base.len()).collect() };
            for i in picks {
                let at = |delta: f64| -> f64 {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, shape.as_slice(), &dev).unwrap();
                    if name == "input" {
                        scalar(&loss(&g, &params, &t, &r, &bn_train))
                    } else {
                        let mut p = params.clone();
                        p.insert(name.clone(), t);
                        scalar(&loss(&g, &p, x.as_tensor(), &r, &bn_train))
                    }
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                let tol = 1e-6 + 1e-4 * fd.abs().max(an[i].abs());
                assert!((fd - an[i]).abs() <= tol, "`{name}`[{i}]: autograd {} vs finite difference {fd}", an[i]);
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
    }
}
