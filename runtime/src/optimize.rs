//! The optimized view of a [`Model`] for inference: the graph after
//! [`tlc_compiler::passes::optimize`] (BatchNorm folded, activations fused, identities and
//! dead nodes removed), folded weights computed from the loaded ones, and the fast CPU
//! kernels of [`crate::kernels::fast`] (with the portable candle path as fallback).
//! The plain [`Model`] is untouched: parameter names and training keep using it.

use crate::exec::{self, NodeParams, ParamSource};
use crate::kernels::fast::{self, packed::{Affine, PackedWeights}, winograd::{self, LazyWinograd, WinogradWeights}, winograd1d::{self, Winograd1dWeights}, ConvArgs, DenseWeights, Isa};
use crate::kernels::{self as k};
use crate::model::{run_graph, Model};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use tlc_compiler::ir::{Activation, Graph, NodeId, NormAxis, Op, Padding};
use tlc_compiler::ops::conv::resolve_padding;
use tlc_compiler::passes::{self, batch_split, BatchSplit, Optimized};

/// A model that runs the optimized graph.
pub struct OptimizedModel {
    /// The optimized graph (node names are the original ones).
    pub graph: Graph,
    /// Parameters by full name, with folded conv/linear weights and biases.
    pub params: HashMap<String, Tensor>,
    /// Device.
    pub device: Device,
    /// What the passes did, the fused activations, the node map and the buffer plan.
    pub plan: Optimized,
    /// Per unfolded BatchNorm node (new index): per-channel scale and shift.
    affine: HashMap<usize, (Vec<f32>, Vec<f32>)>,
    /// Per conv node (new index) with a BatchNorm prologue: its scale, shift and activation.
    prologue: HashMap<usize, Prologue>,
    /// Per dense conv node (new index), on the CPU: weights and bias packed once for
    /// [`fast::packed`], or transformed for [`fast::winograd`] where that pays.
    packed: HashMap<usize, DenseWeights>,
    /// Linear layers over many rows per sample (tokens), by weight name: weights packed once
    /// for [`fast::linear_packed`].
    linears: HashMap<String, PackedWeights>,
    /// Depthwise convs (new index) read by a global average pool: that pool's node, whose
    /// value the conv's kernel computes as it writes its planes (squeeze-excitation).
    pools: HashMap<usize, NodeId>,
    /// The instruction-set level of the fast kernels.
    isa: Isa,
    /// Print the time per op kind of each forward pass on stderr (`tlc run` with `TLC_PROFILE`).
    pub profile: bool,
}

/// A BatchNorm prologue: per-channel scale and shift, then the activation.
type Prologue = (Vec<f32>, Vec<f32>, Option<Activation>);

/// One pass's pooled values computed ahead by their depthwise convs, by pool node (new index).
type Pooled = HashMap<usize, Tensor>;

/// Bytes of activations (input and output of one node, whole batch) past which a node counts
/// as leaving the cache, so the head of the pass up to it runs image by image
/// ([`batch_split`]): the L3 of a server core complex (32 MiB here).
const SPLIT_BUDGET: usize = 32 << 20;

/// Depthwise convs (no residual, no fused inputs) whose output a global average pool with no
/// activation of its own reads, each with that pool: see [`OptimizedModel::pools`].
fn fused_pools(plan: &Optimized) -> HashMap<usize, NodeId> {
    let g = &plan.graph;
    let mut pools = HashMap::new();
    for (id, n) in g.nodes() {
        let global_mean = matches!(n.op, Op::GlobalPool { max: false }) || matches!(&n.op, Op::AdaptiveAvgPool { size } if *size == [1, 1]);
        let [d] = n.inputs[..] else { continue };
        let depthwise = matches!(g.node(d).op, Op::Conv { groups, out, .. } if groups == out && groups > 1);
        if global_mean && depthwise && plan.acts[id.index()].is_none() && !plan.residual[d.index()] && plan.conv_inputs[d.index()].is_none() {
            pools.insert(d.index(), id);
        }
    }
    pools
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// `(scale, shift)` of an eval-mode BatchNorm: `gamma / sqrt(var + eps)`, `beta - mean * scale`
/// (computed in f64).
fn bn_affine(params: &HashMap<String, Tensor>, bn: &str, eps: f64) -> Result<(Vec<f32>, Vec<f32>)> {
    let get = |s: &str| params.get(&format!("{bn}.{s}")).ok_or_else(|| anyhow!("parameter `{bn}.{s}` is not loaded")).and_then(vec1);
    let (g, b, m, v) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
    let scale: Vec<f64> = g.iter().zip(&v).map(|(&g, &v)| g as f64 / (v as f64 + eps).sqrt()).collect();
    let shift = b.iter().zip(&m).zip(&scale).map(|((&b, &m), &s)| (b as f64 - m as f64 * s) as f32).collect();
    Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
}

/// The parameters of the optimized graph `plan` from the plain model's `params`: each
/// remaining node's own tensors (a linear rewritten as a 1x1 conv takes its weight as
/// `[out, in, 1, 1]`), layer scales folded into the conv before them, and for every folded
/// BatchNorm the conv or linear weight scaled by `gamma / sqrt(var + eps)` and its (new) bias.
pub fn folded_params(plan: &Optimized, params: &HashMap<String, Tensor>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (_, n) in plan.graph.nodes() {
        for p in &n.params {
            if let Some(t) = params.get(&p.name) {
                // A linear rewritten as a 1x1 conv takes its weight as `[out, in, 1, 1]`.
                let t = if t.dims() != p.shape.as_slice() && t.elem_count() == p.numel() { t.reshape(p.shape.as_slice())? } else { t.clone() };
                out.insert(p.name.clone(), t);
            }
        }
    }
    for f in &plan.scale_folds {
        let s = vec1(params.get(&f.scale).ok_or_else(|| anyhow!("parameter `{}` is not loaded", f.scale))?)?;
        for suffix in ["weight", "bias"] {
            let name = format!("{}.{suffix}", f.conv);
            let Some(t) = out.get(&name) else { continue };
            let v = vec1(t)?;
            if v.len() % s.len() != 0 {
                bail!("cannot fold `{}` into `{}`: {} channels against {:?}", f.scale, f.conv, s.len(), t.dims());
            }
            let per = v.len() / s.len();
            let scaled: Vec<f32> = v.iter().enumerate().map(|(i, &x)| x * s[i / per]).collect();
            let t = Tensor::from_vec(scaled, t.dims(), device)?;
            out.insert(name, t);
        }
    }
    for f in &plan.folds {
        let node = plan.graph.node(f.node);
        let (scale, shift) = bn_affine(params, &f.bn, f.eps)?;
        let wname = format!("{}.weight", node.name);
        let bname = format!("{}.bias", node.name);
        let w = params.get(&wname).ok_or_else(|| anyhow!("parameter `{wname}` is not loaded"))?;
        let c = scale.len();
        if w.dim(0)? != c {
            bail!("cannot fold `{}` into `{}`: {} channels against {:?}", f.bn, node.name, c, w.dims());
        }
        let wv = vec1(w)?;
        let per = wv.len() / c;
        let wf: Vec<f32> = wv.iter().enumerate().map(|(i, &x)| x * scale[i / per]).collect();
        let b0 = if f.had_bias { vec1(params.get(&bname).ok_or_else(|| anyhow!("parameter `{bname}` is not loaded"))?)? } else { vec![0.0; c] };
        let bf: Vec<f32> = b0.iter().zip(&scale).zip(&shift).map(|((&b, &s), &t)| b * s + t).collect();
        out.insert(wname, Tensor::from_vec(wf, w.dims(), device)?);
        out.insert(bname, Tensor::from_vec(bf, c, device)?);
    }
    Ok(out)
}

impl Model {
    /// The optimized view of this model (see [`OptimizedModel`]) with the best kernels this
    /// CPU has.
    pub fn optimized(&self) -> Result<OptimizedModel> {
        self.optimized_with(Isa::detect())
    }

    /// The optimized view with the fast kernels at level `isa` (lowered to what the CPU has).
    pub fn optimized_with(&self, isa: Isa) -> Result<OptimizedModel> {
        OptimizedModel::new(&self.graph, &self.params, &self.device, isa)
    }
}

impl OptimizedModel {
    /// Optimizes `graph` and folds `params` (the plain model's tensors, by name); the fast
    /// kernels run at level `isa` (lowered to what the CPU has).
    pub fn new(graph: &Graph, params: &HashMap<String, Tensor>, device: &Device, isa: Isa) -> Result<OptimizedModel> {
        let isa = isa.capped();
        let plan = passes::optimize(graph);
        let out = folded_params(&plan, params, device)?;
        let mut affine = HashMap::new();
        for (id, n) in plan.graph.nodes() {
            if let Op::BatchNorm { eps } = n.op {
                affine.insert(id.index(), bn_affine(params, &n.name, eps)?);
            }
        }
        let mut prologue = HashMap::new();
        for (i, ci) in plan.conv_inputs.iter().enumerate() {
            if let Some(pr) = ci.as_ref().and_then(|c| c.prologue.as_ref()) {
                let (s, t) = bn_affine(params, &pr.bn, pr.eps)?;
                prologue.insert(i, (s, t, pr.act));
            }
        }
        let mut packed = HashMap::new();
        if device.is_cpu() {
            for (id, n) in plan.graph.nodes() {
                if let Op::Conv { groups: 1, out: co, bias, kernel, stride, dilation, padding } = &n.op {
                    let (Some(w), b) = (out.get(&format!("{}.weight", n.name)), out.get(&format!("{}.bias", n.name))) else { continue };
                    if w.dtype() != candle_core::DType::F32 {
                        continue;
                    }
                    let wv = vec1(w)?;
                    let bv = if *bias { Some(vec1(b.ok_or_else(|| anyhow!("parameter `{}.bias` is not loaded", n.name))?)?) } else { None };
                    let (k, c) = (wv.len() / co, wv.len() / co / (kernel[0] * kernel[1]));
                    let map = match n.shape.as_deref() {
                        Some([_, oh, ow]) => (*oh, *ow),
                        _ => (0, 0),
                    };
                    let gemm = || PackedWeights::new(&wv, *co, k, bv.as_deref(), isa);

                    // Winograd where it wins at batch 1; both where only larger batches bring
                    // enough tiles.
                    // (A `Same` padding is zero across a kernel dimension of 1.)
                    let pad = match padding {
                        Padding::Fixed(p) => *p,
                        Padding::Same => [0; 4],
                    };
                    let weights = match winograd::fits(*kernel, *stride, *dilation) && winograd::suits(isa, c, *co) {
                        true if winograd::pays(1, map.0, map.1) => DenseWeights::Winograd(WinogradWeights::new(&wv, *co, c, bv.as_deref(), isa)),
                        true => DenseWeights::Either(gemm(), LazyWinograd::new(&wv, *co, c, bv.as_deref(), isa)),
                        false if winograd1d::fits_either(*kernel, *stride, *dilation, pad) && winograd1d::suits(isa, c, *co) => {
                            DenseWeights::Winograd1d(Winograd1dWeights::new(&wv, *co, c, kernel[0].max(kernel[1]), bv.as_deref(), isa))
                        }
                        false => DenseWeights::Gemm(gemm()),
                    };
                    packed.insert(id.index(), weights);
                }
            }
        }
        let linears = if device.is_cpu() { pack_linears(&plan.graph, &out, isa)? } else { HashMap::new() };
        let pools = fused_pools(&plan);
        Ok(OptimizedModel { graph: plan.graph.clone(), params: out, device: device.clone(), plan, affine, prologue, packed, linears, pools, isa, profile: false })
    }

    /// Runs the graph on `x` (NCHW) and returns the final output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(x, &[])?.0)
    }

    /// Whether the optimized graph holds the value of every node of `taps` (ids of the
    /// original graph).
    pub fn holds(&self, taps: &[NodeId]) -> bool {
        taps.iter().all(|t| self.plan.map.get(t.index()).copied().flatten().is_some())
    }

    /// Runs the graph and also returns the values of `taps` (node ids of the *original*
    /// graph); a tap whose value the optimized graph no longer holds is an error.
    pub fn forward_with(&self, x: &Tensor, taps: &[NodeId]) -> Result<(Tensor, Vec<Tensor>)> {
        let taps: Vec<NodeId> = taps
            .iter()
            .map(|t| self.plan.map.get(t.index()).copied().flatten().ok_or_else(|| anyhow!("node {} has no value in the optimized graph", t.index())))
            .collect::<Result<_>>()?;
        let split = self.split_at(x.dims().first().copied().unwrap_or(1));
        if !self.profile {
            let mut pooled = Pooled::new();
            return run_graph(&self.graph, &self.plan.last_use, x, &taps, split, |id, _, ins| self.eval(id, ins, &mut pooled));
        }
        let mut ms = vec![0.0; self.graph.graph.node_count()];
        let mut pooled = Pooled::new();
        let out = run_graph(&self.graph, &self.plan.last_use, x, &taps, split, |id, _, ins| self.eval_timed(id, ins, &mut ms, &mut pooled))?;
        eprint!("{}", self.profile_report(&ms));
        Ok(out)
    }

    fn eval_timed(&self, id: NodeId, ins: &[Tensor], ms: &mut [f64], pooled: &mut Pooled) -> Result<Tensor> {
        let t0 = std::time::Instant::now();
        let out = self.eval(id, ins, pooled)?;
        // Summed: a split pass runs its head once per image.
        ms[id.index()] += t0.elapsed().as_secs_f64() * 1e3;
        Ok(out)
    }

    /// Runs the graph on `x` and also returns the wall time of every node in ms (indexed by
    /// node of [`OptimizedModel::graph`]; 0 for the input).
    pub fn forward_timed(&self, x: &Tensor) -> Result<(Tensor, Vec<f64>)> {
        let mut ms = vec![0.0; self.graph.graph.node_count()];
        let mut pooled = Pooled::new();
        let (y, _) = run_graph(&self.graph, &self.plan.last_use, x, &[], self.split_at(x.dims().first().copied().unwrap_or(1)), |id, _, ins| self.eval_timed(id, ins, &mut ms, &mut pooled))?;
        Ok((y, ms))
    }

    /// The head a pass at `batch` runs image by image ([`batch_split`]): on the CPU, where a
    /// node whose batch's input and output exceed [`SPLIT_BUDGET`] leaves the cache; never
    /// ending at a depthwise conv that computes its pool (the pool is carried within a pass).
    pub fn split_at(&self, batch: usize) -> Option<BatchSplit> {
        let keep = |carry: NodeId| !self.pools.contains_key(&carry.index());
        let weights = |id: NodeId| match (self.packed.get(&id.index()), self.linears.get(&self.graph.node(id).name)) {
            (Some(w), _) => w.bytes(),
            (None, Some(pw)) => pw.bytes(),
            (None, None) => self.graph.node(id).params.iter().map(|p| 4 * p.numel()).sum(),
        };
        self.device.is_cpu().then(|| batch_split(&self.graph, &self.plan.last_use, batch, SPLIT_BUDGET, weights, keep)).flatten()
    }

    /// Per op kind (see [`OptimizedModel::op_kind`]): the sum of `ms` (per node, as
    /// [`OptimizedModel::forward_timed`] gives) over its nodes and the node count, slowest first.
    pub fn profile_table(&self, ms: &[f64]) -> Vec<(String, f64, usize)> {
        let mut rows: Vec<(String, f64, usize)> = Vec::new();
        for (id, node) in self.graph.nodes() {
            let t = ms[id.index()];
            if !t.is_finite() || node.inputs.is_empty() {
                continue;
            }
            let kind = self.op_kind(id);
            match rows.iter_mut().find(|r| r.0 == kind) {
                Some(r) => {
                    r.1 += t;
                    r.2 += 1;
                }
                None => rows.push((kind, t, 1)),
            }
        }
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }

    /// [`OptimizedModel::profile_table`] as text: the total, then one line per op kind.
    pub fn profile_report(&self, ms: &[f64]) -> String {
        let rows = self.profile_table(ms);
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let mut s = format!("{total:9.2} ms in all ({:?} kernels)\n", self.isa);
        for (kind, t, n) in rows {
            s += &format!("{t:9.2} ms {:5.1}% {n:5}x  {kind}\n", 100.0 * t / total);
        }
        s
    }

    /// A short description of what node `id` (of [`OptimizedModel::graph`]) computes, for
    /// grouping a profile by kind: the op, with kernel size and stride for convs.
    pub fn op_kind(&self, id: NodeId) -> String {
        let node = self.graph.node(id);
        match &node.op {
            Op::Conv { kernel, groups, stride, out, .. } => {
                let kind = if *groups == 1 { "dense" } else if *groups == *out { "depthwise" } else { "grouped" };
                format!("Conv {}x{} s{} {kind}", kernel[0], kernel[1], stride[0])
            }
            other => {
                let s = format!("{other:?}");
                s.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("").to_string()
            }
        }
    }

    /// The instruction-set level the fast kernels run at.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Node `id` on its inputs; `pooled` carries pools computed by their depthwise convs
    /// ([`OptimizedModel::pools`]) to their own nodes within the pass.
    fn eval(&self, id: NodeId, ins: &[Tensor], pooled: &mut Pooled) -> Result<Tensor> {
        if let Some(y) = pooled.remove(&id.index()) {
            return Ok(y);
        }
        let node = self.graph.node(id);
        let act = self.plan.acts[id.index()];
        let p = NodeParams { node: &node.name, params: &self.params };
        let isa = self.isa;
        let fast = match &node.op {
            Op::Conv { .. } => Some(self.conv(id, ins, act, pooled)?),
            Op::BatchNorm { .. } => {
                let (s, t) = &self.affine[&id.index()];
                fast::channel_affine(&ins[0], s, t, act, isa)?
            }
            Op::Scale { shape } if act.is_none() && shape.len() == 3 && shape[1] == 1 && shape[2] == 1 && ins[0].rank() == 4 => {
                let s = vec1(p.param("")?)?;
                let zeros = vec![0f32; s.len()];
                fast::channel_affine(&ins[0], &s, &zeros, None, isa)?
            }
            Op::ChannelAffine { scale, shift } => {
                let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                fast::channel_affine(&ins[0], &f32s(scale), &f32s(shift), act, isa)?
            }
            Op::MaxPool { kernel, stride, padding, dilation, ceil } if act.is_none() && ins[0].rank() == 4 => {
                let (_, _, h, w) = ins[0].dims4()?;
                let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
                fast::pool2d(&ins[0], *kernel, *stride, pad, *dilation, *ceil, None, isa)?
            }
            Op::AvgPool { kernel, stride, padding, ceil, count_include_pad } if act.is_none() && ins[0].rank() == 4 => {
                let (_, _, h, w) = ins[0].dims4()?;
                let pad = resolve_padding(*padding, [h, w], *kernel, *stride, [1, 1]);
                fast::pool2d(&ins[0], *kernel, *stride, pad, [1, 1], *ceil, Some(*count_include_pad), isa)?
            }
            Op::GlobalPool { max } if act.is_none() && ins[0].rank() == 4 => fast::global_pool(&ins[0], *max, isa)?,
            Op::AdaptiveAvgPool { size } if act.is_none() && ins[0].rank() == 4 && ins[0].dims()[2..] == size[..] => Some(ins[0].clone()),
            Op::AdaptiveAvgPool { size } if act.is_none() && ins[0].rank() == 4 && *size == [1, 1] => fast::global_pool(&ins[0], false, isa)?,
            Op::Add if ins.len() == 2 => fast::add_act(&ins[0], &ins[1], act, isa)?,
            Op::Mul if ins.len() == 2 && act.is_none() && ins[0].rank() == 4 && ins[1].rank() == 4 => match (ins[0].dims4()?, ins[1].dims4()?) {
                ((_, _, 1, 1), (_, _, h, w)) if h * w > 1 => fast::channel_gate(&ins[1], &ins[0], isa)?,
                _ => fast::channel_gate(&ins[0], &ins[1], isa)?,
            },
            Op::Linear { bias, .. } => match self.linears.get(&format!("{}.weight", node.name)) {
                Some(pw) => fast::linear_packed(&ins[0], pw, act)?,
                None => fast::linear(&ins[0], p.param("weight")?, if *bias { Some(p.param("bias")?) } else { None }, act, isa)?,
            },
            Op::LayerNorm { eps, axis } if act.is_none() => fast::layer_norm(&ins[0], p.param("weight")?, p.param("bias")?, *eps, *axis == NormAxis::Channels, isa)?,
            Op::SelfAttention { heads } if act.is_none() => Some(self_attention(&ins[0], *heads, &p, &|w| self.linears.get(&format!("{}.{w}", node.name)), isa)?),
            _ => None,
        };
        match fast {
            Some(y) => Ok(y),
            None => Ok(exec::maybe_activation(act, exec::eval(&node.op, ins, &p)?)?),
        }
    }
}

impl OptimizedModel {
    /// A conv node: the packed kernel with the fused inputs when it applies, else the input
    /// built (concatenated, BatchNorm + activation, gated) and the plain fast or portable conv.
    fn conv(&self, id: NodeId, ins: &[Tensor], act: Option<Activation>, pooled: &mut Pooled) -> Result<Tensor> {
        let node = self.graph.node(id);
        let Op::Conv { stride, padding, dilation, groups, bias, kernel, .. } = &node.op else { bail!("internal: `{}` is not a conv", node.name) };
        let fused = self.plan.conv_inputs[id.index()].as_ref();
        let parts = fused.map_or(1, |f| f.parts);
        let gate = fused.filter(|f| f.gate).map(|_| &ins[parts]);
        let res = if self.plan.residual[id.index()] { ins.last() } else { None };
        let prologue = self.prologue.get(&id.index());
        let (_, _, h, w) = ins[0].dims4()?;
        let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
        if let Some(pw) = self.packed.get(&id.index()) {
            let affine = prologue.map(|(s, t, a)| Affine { scale: s, shift: t, act: *a });
            let parts: Vec<&Tensor> = ins[..parts].iter().collect();
            if let Some(y) = fast::conv2d_packed(&parts, pw, &ConvArgs { kernel: *kernel, stride: *stride, pad, dilation: *dilation }, affine, gate, res, act)? {
                return Ok(y);
            }
        }
        let x = if parts > 1 { Tensor::cat(&ins[..parts], 1)? } else { ins[0].clone() };
        let x = match prologue {
            Some((s, t, a)) => exec::maybe_activation(*a, channel_affine_any(&x, s, t)?)?,
            None => x,
        };
        let x = match gate {
            Some(g) => x.broadcast_mul(g)?,
            None => x,
        };
        let p = NodeParams { node: &node.name, params: &self.params };
        let b = if *bias { Some(p.param("bias")?) } else { None };
        let wt = p.param("weight")?;
        if let Some(&pool) = self.pools.get(&id.index()) {
            if let Some((y, mean)) = fast::depthwise_pooled(&x, wt, b, *stride, pad, *dilation, act, self.isa)? {
                pooled.insert(pool.index(), mean);
                return Ok(y);
            }
        }
        if let Some(y) = fast::conv2d_residual(&x, wt, b, *stride, pad, *dilation, *groups, res, act, self.isa)? {
            return Ok(y);
        }
        let y = k::conv2d(&x, wt, b, *stride, pad, *dilation, *groups)?;
        let y = match res {
            Some(r) => (y + r)?,
            None => y,
        };
        Ok(exec::maybe_activation(act, y)?)
    }
}

/// Packs the linear layers (and attention projections) that run on many rows per sample:
/// `[L, D]` token inputs with `L >= 16`, where the packed GEMM beats the `gemm` crate; a
/// one-row classifier keeps the crate's matrix-vector path (and no second copy of its weights).
fn pack_linears(graph: &Graph, params: &HashMap<String, Tensor>, isa: Isa) -> Result<HashMap<String, PackedWeights>> {
    let mut out = HashMap::new();
    for (_, n) in graph.nodes() {
        let rows: usize = n.inputs.first().and_then(|i| graph.node(*i).shape.as_ref()).map_or(0, |s| s[..s.len().saturating_sub(1)].iter().product());
        if rows < 16 {
            continue;
        }
        let pairs: &[(&str, &str)] = match n.op {
            Op::Linear { .. } => &[("weight", "bias")],
            Op::SelfAttention { .. } => &[("in_proj_weight", "in_proj_bias"), ("out_proj.weight", "out_proj.bias")],
            _ => continue,
        };
        for (w, b) in pairs {
            let wname = format!("{}.{w}", n.name);
            let Some(wt) = params.get(&wname).filter(|t| t.rank() == 2 && t.dtype() == candle_core::DType::F32) else { continue };
            let (o, i) = wt.dims2()?;
            let bias = params.get(&format!("{}.{b}", n.name)).map(vec1).transpose()?;
            out.insert(wname, PackedWeights::new_linear(&vec1(wt)?, o, i, bias.as_deref(), isa));
        }
    }
    Ok(out)
}

/// `x * scale[c] + shift[c]` on NCHW `x` on any device.
fn channel_affine_any(x: &Tensor, scale: &[f32], shift: &[f32]) -> Result<Tensor> {
    let c = scale.len();
    let s = Tensor::from_slice(scale, (1, c, 1, 1), x.device())?;
    let t = Tensor::from_slice(shift, (1, c, 1, 1), x.device())?;
    Ok(x.broadcast_mul(&s)?.broadcast_add(&t)?)
}

/// `nn.MultiheadAttention` self-attention (batch first) with the fast linear layers and
/// the fused attention kernel. `packed(weight suffix)`: the packed weights of a projection,
/// when there are.
fn self_attention<'a>(x: &Tensor, heads: usize, p: &dyn ParamSource, packed: &dyn Fn(&str) -> Option<&'a PackedWeights>, isa: Isa) -> Result<Tensor> {
    let lin = |x: &Tensor, w: &str, b: &str| -> candle_core::Result<Tensor> {
        if let Some(pw) = packed(w) {
            if let Some(y) = fast::linear_packed(x, pw, None)? {
                return Ok(y);
            }
        }
        let (w, b) = (p.param(w)?, p.param(b)?);
        match fast::linear(x, w, Some(b), None, isa)? {
            Some(y) => Ok(y),
            None => exec::linear(x, w, Some(b)),
        }
    };
    let fused = |qkv: &Tensor| fast::attention_qkv(qkv, heads, isa);
    Ok(exec::self_attention_with(x, heads, &lin, &fused)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlc_compiler::span::MemoryLoader;

    /// The model of an inline spec (named `t.yaml`) with formula weights.
    fn inline_model(spec: &str) -> Model {
        let loader = MemoryLoader([("t.yaml".to_string(), spec.to_string())].into_iter().collect());
        let graph = tlc_compiler::compile("t.yaml", &loader, &tlc_compiler::Options::default()).graph.unwrap();
        Model::with_fixture_weights(graph, &Device::Cpu).unwrap()
    }

    #[test]
    fn channel_affine_runs_natively_and_matches_the_plain_model() {
        let spec = "name: t\ninput: [3, 4, 5]\ngraph:\n  - t: channel_affine(scale=[0.458, 0.448, 0.45], shift=[-0.03, -0.088, -0.188])\n  - relu\n";
        let model = inline_model(spec);
        let x = Tensor::arange(0u32, 120, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let x = ((x.reshape((2, 3, 4, 5)).unwrap() - 50.0).unwrap() * 0.1).unwrap();
        let want: Vec<f32> = model.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let opt = model.optimized().unwrap();
        assert!(fast::channel_affine(&x, &[1.0; 3], &[0.0; 3], None, Isa::detect()).unwrap().is_some(), "the fast kernel applies");
        let got: Vec<f32> = opt.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want);
        assert!(want.iter().all(|&v| v >= 0.0) && want.iter().any(|&v| v > 0.0));
    }

    /// A squeeze-excitation pool reading a depthwise conv is summed by the conv's kernel (the
    /// pool node then only hands its value on): same outputs as the plain model, on a map the
    /// per-plane kernels compute and on one the 16-channel blocks do.
    #[test]
    fn depthwise_conv_pools_for_its_squeeze_excitation() {
        for hw in [12, 7] {
            let spec = format!(
                "name: t\ninput: [3, {hw}, {hw}]\ngraph:\n  - conv(32, k=1)\n  - conv(32, k=3, p=1, groups=32, bias=false)\n  - bn\n  - silu\n  - branches:\n      - []\n      - \"adaptive_avgpool(1) -> conv(8, k=1) -> silu -> conv(32, k=1) -> sigmoid\"\n    join: mul\n  - conv(16, k=1)\n"
            );
            let model = inline_model(&spec);
            let opt = model.optimized().unwrap();
            assert_eq!(opt.pools.len(), 1, "the pool is fused into the depthwise conv");
            let x = Tensor::arange(0u32, (2 * 3 * hw * hw) as u32, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            let x = ((x.reshape((2, 3, hw, hw)).unwrap() * 0.01).unwrap().sin().unwrap() * 2.0).unwrap();
            let want = model.forward(&x).unwrap();
            for isa in Isa::all_available() {
                let got = model.optimized_with(isa).unwrap().forward(&x).unwrap();
                let worst = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(worst < 1e-4, "{hw}x{hw} {isa:?}: {worst}");
            }
        }
    }

    /// At batch 8 the head of large maps runs image by image ([`batch_split`]) and the pass
    /// still computes what the plain model does.
    #[test]
    fn a_pass_split_image_by_image_matches_the_plain_model() {
        let spec = "name: t\ninput: [3, 128, 128]\ngraph:\n  - conv(48, k=1)\n  - bn\n  - relu\n  - branches:\n      - []\n      - \"conv(48, k=3, p=1, groups=48) -> bn\"\n    join: add\n  - relu\n  - conv(64, k=1, s=2)\n  - global_avgpool\n  - flatten\n  - linear(10)\n";
        let model = inline_model(spec);
        let x = Tensor::arange(0u32, 8 * 3 * 128 * 128, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let x = ((x.reshape((8, 3, 128, 128)).unwrap() * 0.001).unwrap().sin().unwrap() * 2.0).unwrap();
        let want = model.forward(&x).unwrap();
        let opt = model.optimized().unwrap();
        let split = opt.split_at(8).expect("a head to split at batch 8");
        assert!(split.end + 3 < opt.graph.graph.node_count(), "the classifier stays batched: {split:?}");
        assert_eq!(opt.split_at(1), None);
        let got = opt.forward(&x).unwrap();
        let worst = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(worst <= 1e-5 * scale.max(1.0), "worst {worst} of {scale}");
    }

    /// A pass that fails ends (the workers spinning for it stop) and the pool runs the next: run
    /// from outside the pool, as a caller does, on rayon's global pool (one worker per core).
    #[test]
    fn a_failed_pass_ends_and_the_pool_runs_the_next() {
        let spec = "name: t\ninput: [3, 8, 8]\ngraph:\n  - conv(16, k=3, p=1)\n  - relu\n  - global_avgpool\n";
        let model = inline_model(spec);
        let opt = model.optimized().unwrap();
        let good = Tensor::ones((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::ones((2, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        for _ in 0..3 {
            let err = opt.forward(&bad).unwrap_err().to_string();
            assert!(err.contains("this model takes [N, 3, 8, 8]"), "{err}");
            assert!(model.forward(&bad).is_err());
            assert_eq!(opt.forward(&good).unwrap().dims(), [2, 16, 1, 1]);
            assert_eq!(model.forward(&good).unwrap().dims(), [2, 16, 1, 1]);
        }
    }
}
