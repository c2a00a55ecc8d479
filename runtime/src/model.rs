//! A runnable model: the IR graph, its tensors, and a forward pass that frees every
//! intermediate as soon as its last reader has run.

use crate::exec::{self, NodeParams};
use crate::formula;
use crate::optimize::OptimizedModel;
use crate::rng::Rng;
use crate::weights::Weights;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tlc_compiler::ir::{Graph, Node, NodeId, ParamKind};
use tlc_compiler::passes::BatchSplit;

/// A compiled graph with its parameters on a device.
pub struct Model {
    /// The IR.
    pub graph: Graph,
    /// Parameters by full name.
    pub params: HashMap<String, Tensor>,
    /// Device the model runs on.
    pub device: Device,
    /// Print the time per op kind of each optimized forward pass on stderr (`tlc` sets it
    /// from `TLC_PROFILE`).
    pub profile: bool,
    last_use: Vec<usize>,
    /// The optimized view, built from `params` on the first [`Model::infer`].
    view: OnceLock<OptimizedModel>,
}

/// The expected `(name, shape)` list of a graph, for weight checks.
pub fn expected_params(g: &Graph) -> Vec<(String, Vec<usize>)> {
    g.params().map(|p| (p.name.clone(), p.shape.clone())).collect()
}

impl Model {
    fn build(graph: Graph, params: HashMap<String, Tensor>, device: Device) -> Model {
        let last_use = graph.last_use();
        Model { graph, params, device, profile: false, last_use, view: OnceLock::new() }
    }

    /// A model whose parameters are loaded from `weights` by name (strict unless `allow_missing`,
    /// in which case missing tensors get the default initialisation).
    pub fn from_weights(graph: Graph, weights: &Weights, allow_missing: bool, device: &Device) -> Result<Model> {
        let expected = expected_params(&graph);
        weights.check(&expected, allow_missing).map_err(|e| anyhow!("{e}"))?;
        let mut params = HashMap::new();
        for p in graph.params() {
            let t = match weights.get(&p.name) {
                Some(t) => t.to_device(device)?,
                None => init_param(&p.name, &p.shape, p.kind, 0, device)?,
            };
            params.insert(p.name.clone(), t);
        }
        Ok(Model::build(graph, params, device.clone()))
    }

    /// A model with the deterministic fixture weights of `../shared/parity/FORMULA.md`.
    pub fn with_fixture_weights(graph: Graph, device: &Device) -> Result<Model> {
        let mut params = HashMap::new();
        for p in graph.params() {
            let v = formula::fixture_values(&p.name, &p.shape);
            params.insert(p.name.clone(), Tensor::from_vec(v, p.shape.as_slice(), device)?);
        }
        Ok(Model::build(graph, params, device.clone()))
    }

    /// A model with PyTorch-default random initialisation (Kaiming uniform for weights).
    pub fn random(graph: Graph, seed: u64, device: &Device) -> Result<Model> {
        let mut params = HashMap::new();
        for p in graph.params() {
            params.insert(p.name.clone(), init_param(&p.name, &p.shape, p.kind, seed, device)?);
        }
        Ok(Model::build(graph, params, device.clone()))
    }

    /// Inference, the one entry point for running a model: the output for `x` (NCHW) and the
    /// values of `taps`, from the optimized view (folded BatchNorm, fused activations, fast
    /// kernels; built once, from the parameters as they are on the first call) when it holds
    /// every tap, else from the plain graph (a tap on a conv whose BatchNorm was folded, say).
    /// Errors of either path are returned, never replaced by the other path's result.
    pub fn infer(&self, x: &Tensor, taps: &[NodeId]) -> Result<(Tensor, Vec<Tensor>)> {
        let view = match self.view.get() {
            Some(v) => v,
            None => {
                let mut v = self.optimized()?;
                v.profile = self.profile;
                self.view.get_or_init(|| v)
            }
        };
        if view.holds(taps) {
            view.forward_with(x, taps)
        } else {
            self.forward_with(x, taps)
        }
    }

    /// Runs the plain graph on `x` (NCHW) and returns the final output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, _) = self.forward_with(x, &[])?;
        Ok(out)
    }

    /// Runs the plain graph and also returns the outputs of the `taps` nodes.
    pub fn forward_with(&self, x: &Tensor, taps: &[NodeId]) -> Result<(Tensor, Vec<Tensor>)> {
        run_graph(&self.graph, &self.last_use, x, taps, None, |_, node, ins| {
            let p = NodeParams { node: &node.name, params: &self.params };
            Ok(exec::eval(&node.op, ins, &p)?)
        })
    }
}

/// Runs `graph` on `x` in node order with `eval` for every node but the input, returns the
/// output and the values of `taps`, and frees each value once `last_use` says its last reader
/// ran; with `split` (and more than one image, no taps), the head runs image by image.
/// The loop runs on a worker of rayon's pool: each op's parallel loop then starts on this
/// thread and wakes only the others, instead of blocking the caller and waking every worker
/// (and the caller stays off the cores the workers compute on); the other workers spin for the
/// pass's work until it ends ([`keep_warm`]).
pub(crate) fn run_graph(
    graph: &Graph,
    last_use: &[usize],
    x: &Tensor,
    taps: &[NodeId],
    split: Option<BatchSplit>,
    eval: impl FnMut(NodeId, &Node, &[Tensor]) -> Result<Tensor> + Send,
) -> Result<(Tensor, Vec<Tensor>)> {
    if rayon::current_thread_index().is_some() {
        return run_nodes(graph, last_use, x, taps, split, eval);
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| keep_warm(done, owner));
        }
        // Set on the way out, an error or a panic included: the scope waits for the spinners.
        let _stop = SetOnDrop(done);
        run_nodes(graph, last_use, x, taps, split, eval)
    })
}

/// Keeps a worker taking the pass's parallel work until `done`, spinning in between, as ONNX
/// Runtime's pool does: a worker that sleeps between two ops is woken through the kernel, tens
/// of microseconds on a virtual machine, several times a pass (MobileNetV2 b1: ~40 % fewer
/// context switches, passes ~3 % faster). On the thread that runs the nodes (`owner`, which
/// may pick this job up while it waits inside an op) it returns at once: it must never wait
/// on its own pass.
fn keep_warm(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn run_nodes(
    graph: &Graph,
    last_use: &[usize],
    x: &Tensor,
    taps: &[NodeId],
    split: Option<BatchSplit>,
    mut eval: impl FnMut(NodeId, &Node, &[Tensor]) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let input = &graph.meta.input;
    let dims = x.dims();
    if dims.len() != 4 || dims[1..] != input[..] {
        bail!("the input has shape {:?}; this model takes [N, {}, {}, {}]", dims, input[0], input[1], input[2]);
    }
    let n = graph.graph.node_count();
    let mut values: Vec<Option<Tensor>> = vec![None; n];
    let mut tapped: Vec<Option<Tensor>> = vec![None; taps.len()];
    let mut start = 0;
    // The head image by image; taps would need joining too, so passes with taps run batched.
    if let Some(s) = split.filter(|_| dims[0] > 1 && taps.is_empty()) {
        let mut parts = Vec::with_capacity(dims[0]);
        for i in 0..dims[0] {
            let mut head = vec![None; n];
            run_range(graph, last_use, &x.narrow(0, i, 1)?, 0..s.end + 1, &mut head, &[], &mut [], &mut eval)?;
            parts.push(head[s.carry.index()].take().ok_or_else(|| anyhow!("internal: the split left no value for node {}", s.carry.index()))?);
        }
        values[s.carry.index()] = Some(Tensor::cat(&parts, 0)?);
        start = s.end + 1;
    }
    run_range(graph, last_use, x, start..n, &mut values, taps, &mut tapped, &mut eval)?;
    let out = values[graph.output.index()].take().ok_or_else(|| anyhow!("the graph produced no output"))?;
    Ok((out, tapped.into_iter().map(|t| t.unwrap()).collect()))
}

/// Runs the nodes at `range` (indices in execution order) on `values`, the input node taking
/// `x`; records `taps` in `tapped` and frees each value after its last reader.
#[allow(clippy::too_many_arguments)]
fn run_range(
    graph: &Graph,
    last_use: &[usize],
    x: &Tensor,
    range: std::ops::Range<usize>,
    values: &mut [Option<Tensor>],
    taps: &[NodeId],
    tapped: &mut [Option<Tensor>],
    eval: &mut impl FnMut(NodeId, &Node, &[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    for (id, node) in graph.nodes().skip(range.start).take(range.len()) {
        let ins: Vec<Tensor> = node
            .inputs
            .iter()
            .map(|i| values[i.index()].clone().ok_or_else(|| anyhow!("internal: value of node {} was freed early", i.index())))
            .collect::<Result<_>>()?;
        let out = if node.inputs.is_empty() {
            x.clone()
        } else {
            eval(id, node, &ins).with_context(|| format!("while running node `{}`", node.name))?
        };
        for (k, t) in taps.iter().enumerate() {
            if *t == id {
                tapped[k] = Some(out.clone());
            }
        }
        values[id.index()] = Some(out);
        for inp in &node.inputs {
            if last_use[inp.index()] == id.index() {
                values[inp.index()] = None;
            }
        }
    }
    Ok(())
}

/// PyTorch-default initialisation of one parameter, deterministic in `seed` and the name.
pub fn init_param(name: &str, shape: &[usize], kind: ParamKind, seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let mut rng = Rng::from_state(formula::fnv1a64(name.as_bytes()) ^ seed.wrapping_mul(0x9E3779B97F4A7C15));
    let mut uniform = move || rng.uniform() * 2.0 - 1.0;
    let values: Vec<f32> = match kind {
        ParamKind::RunningVar => vec![1.0; n],
        ParamKind::RunningMean => vec![0.0; n],
        ParamKind::Weight if shape.len() == 1 => vec![1.0; n],
        ParamKind::Weight => {
            let bound = (1.0 / fan_in as f64).sqrt(); // kaiming_uniform_(a=sqrt(5))
            (0..n).map(|_| (uniform() * bound) as f32).collect()
        }
        ParamKind::Bias => vec![0.0; n],
        ParamKind::Other => (0..n).map(|_| (uniform() * 0.02) as f32).collect(),
    };
    Ok(Tensor::from_vec(values, shape, device)?)
}
