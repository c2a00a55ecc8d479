//! The optimized view of a [`Model`] for inference: the graph after
//! [`tlc_compiler::passes::optimize`] (BatchNorm folded, activations fused, identities and
//! dead nodes removed), folded weights computed from the loaded ones, and the fast CPU
//! kernels of [`crate::kernels::fast`] (with the portable candle path as fallback).
//! The plain [`Model`] is untouched: parameter names and training keep using it.

use crate::exec::{self, NodeParams, ParamSource};
use crate::kernels::{self as k, fast};
use crate::model::{run_graph, Model};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use tlc_compiler::ir::{Graph, NodeId, NormAxis, Op};
use tlc_compiler::ops::conv::resolve_padding;
use tlc_compiler::passes::{self, Optimized};

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
    /// Per dense conv node (new index), unless `TLC_CONV=gemm`: weights and bias packed once
    /// for [`fast::packed`].
    packed: HashMap<usize, fast::packed::PackedWeights>,
    /// Print the time per op kind of each forward pass on stderr.
    pub profile: bool,
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
/// remaining node's own tensors, and for every folded BatchNorm the conv or linear weight
/// scaled by `gamma / sqrt(var + eps)` and its (new) bias.
pub fn folded_params(plan: &Optimized, params: &HashMap<String, Tensor>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (_, n) in plan.graph.nodes() {
        for p in &n.params {
            if let Some(t) = params.get(&p.name) {
                out.insert(p.name.clone(), t.clone());
            }
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
    /// The optimized view of this model (see [`OptimizedModel`]).
    pub fn optimized(&self) -> Result<OptimizedModel> {
        OptimizedModel::new(&self.graph, &self.params, &self.device)
    }
}

impl OptimizedModel {
    /// Optimizes `graph` and folds `params` (the plain model's tensors, by name).
    pub fn new(graph: &Graph, params: &HashMap<String, Tensor>, device: &Device) -> Result<OptimizedModel> {
        let plan = passes::optimize(graph);
        let out = folded_params(&plan, params, device)?;
        let mut affine = HashMap::new();
        for (id, n) in plan.graph.nodes() {
            if let Op::BatchNorm { eps } = n.op {
                affine.insert(id.index(), bn_affine(params, &n.name, eps)?);
            }
        }
        let mut packed = HashMap::new();
        if fast::use_packed() && device.is_cpu() {
            for (id, n) in plan.graph.nodes() {
                if let Op::Conv { groups: 1, out: co, bias, .. } = &n.op {
                    let (Some(w), b) = (out.get(&format!("{}.weight", n.name)), out.get(&format!("{}.bias", n.name))) else { continue };
                    if w.dtype() != candle_core::DType::F32 {
                        continue;
                    }
                    let wv = vec1(w)?;
                    let bv = if *bias { Some(vec1(b.ok_or_else(|| anyhow!("parameter `{}.bias` is not loaded", n.name))?)?) } else { None };
                    packed.insert(id.index(), fast::packed::PackedWeights::new(&wv, *co, wv.len() / co, bv.as_deref()));
                }
            }
        }
        Ok(OptimizedModel { graph: plan.graph.clone(), params: out, device: device.clone(), plan, affine, packed, profile: false })
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
        let profile = self.profile;
        let mut prof: Vec<(String, f64, usize)> = Vec::new();
        let result = run_graph(&self.graph, &self.plan.last_use, x, &taps, |id, node, ins| {
            let t0 = profile.then(std::time::Instant::now);
            let out = self.eval(id, ins)?;
            if let Some(t0) = t0 {
                let key = profile_key(&node.op, &out);
                let dt = t0.elapsed().as_secs_f64() * 1e3;
                match prof.iter_mut().find(|p| p.0 == key) {
                    Some(p) => {
                        p.1 += dt;
                        p.2 += 1;
                    }
                    None => prof.push((key, dt, 1)),
                }
            }
            Ok(out)
        });
        if profile {
            prof.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (k, t, n) in &prof {
                eprintln!("{t:9.2} ms {n:5}x  {k}");
            }
        }
        result
    }

    fn eval(&self, id: NodeId, ins: &[Tensor]) -> Result<Tensor> {
        let node = self.graph.node(id);
        let act = self.plan.acts[id.index()];
        let p = NodeParams { node: &node.name, params: &self.params };
        let fast = match &node.op {
            Op::Conv { stride, padding, dilation, groups, bias, kernel, .. } => {
                let (_, _, h, w) = ins[0].dims4()?;
                let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
                let b = if *bias { Some(p.param("bias")?) } else { None };
                let wt = p.param("weight")?;
                let res = if self.plan.residual[id.index()] { Some(&ins[1]) } else { None };
                let packed = match self.packed.get(&id.index()) {
                    Some(pw) => fast::conv2d_packed(&ins[0], pw, *kernel, *stride, pad, *dilation, res, act)?,
                    None => None,
                };
                match packed {
                    Some(y) => Some(y),
                    None => match fast::conv2d_residual(&ins[0], wt, b, *stride, pad, *dilation, *groups, res, act)? {
                        Some(y) => Some(y),
                        None => {
                            let y = k::conv2d(&ins[0], wt, b, *stride, pad, *dilation, *groups)?;
                            let y = match res {
                                Some(r) => (y + r)?,
                                None => y,
                            };
                            Some(exec::maybe_activation(act, y)?)
                        }
                    },
                }
            }
            Op::BatchNorm { .. } => {
                let (s, t) = &self.affine[&id.index()];
                fast::channel_affine(&ins[0], s, t, act)?
            }
            Op::Scale { shape } if act.is_none() && shape.len() == 3 && shape[1] == 1 && shape[2] == 1 && ins[0].rank() == 4 => {
                let s = vec1(p.param("")?)?;
                let zeros = vec![0f32; s.len()];
                fast::channel_affine(&ins[0], &s, &zeros, None)?
            }
            Op::ChannelAffine { scale, shift } => {
                let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                fast::channel_affine(&ins[0], &f32s(scale), &f32s(shift), act)?
            }
            Op::MaxPool { kernel, stride, padding, dilation, ceil } if act.is_none() && ins[0].rank() == 4 => {
                let (_, _, h, w) = ins[0].dims4()?;
                let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
                fast::pool2d(&ins[0], *kernel, *stride, pad, *dilation, *ceil, None)?
            }
            Op::AvgPool { kernel, stride, padding, ceil, count_include_pad } if act.is_none() && ins[0].rank() == 4 => {
                let (_, _, h, w) = ins[0].dims4()?;
                let pad = resolve_padding(*padding, [h, w], *kernel, *stride, [1, 1]);
                fast::pool2d(&ins[0], *kernel, *stride, pad, [1, 1], *ceil, Some(*count_include_pad))?
            }
            Op::GlobalPool { max } if act.is_none() && ins[0].rank() == 4 => fast::global_pool(&ins[0], *max)?,
            Op::AdaptiveAvgPool { size } if act.is_none() && ins[0].rank() == 4 && ins[0].dims()[2..] == size[..] => Some(ins[0].clone()),
            Op::AdaptiveAvgPool { size } if act.is_none() && ins[0].rank() == 4 && *size == [1, 1] => fast::global_pool(&ins[0], false)?,
            Op::Add if ins.len() == 2 => fast::add_act(&ins[0], &ins[1], act)?,
            Op::Linear { bias, .. } => fast::linear(&ins[0], p.param("weight")?, if *bias { Some(p.param("bias")?) } else { None }, act)?,
            Op::LayerNorm { eps, axis } if act.is_none() => fast::layer_norm(&ins[0], p.param("weight")?, p.param("bias")?, *eps, *axis == NormAxis::Channels)?,
            Op::SelfAttention { heads } if act.is_none() => Some(self_attention(&ins[0], *heads, &p)?),
            _ => None,
        };
        match fast {
            Some(y) => Ok(y),
            None => Ok(exec::maybe_activation(act, exec::eval(&node.op, ins, &p)?)?),
        }
    }
}

fn profile_key(op: &Op, _out: &Tensor) -> String {
    match op {
        Op::Conv { kernel, groups, stride, .. } => format!("Conv k{}x{} s{} {}", kernel[0], kernel[1], stride[0], if *groups == 1 { "dense" } else { "grouped" }),
        other => {
            let s = format!("{other:?}");
            s.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("").to_string()
        }
    }
}

/// `nn.MultiheadAttention` self-attention (batch first) with the fast linear layers and
/// the fused attention kernel where they apply.
fn self_attention(x: &Tensor, heads: usize, p: &dyn ParamSource) -> Result<Tensor> {
    let lin = |x: &Tensor, w: &Tensor, b: &Tensor| match fast::linear(x, w, Some(b), None)? {
        Some(y) => Ok(y),
        None => exec::linear(x, w, Some(b)),
    };
    Ok(exec::self_attention_with(x, heads, p, &lin, &|qkv| fast::attention_qkv(qkv, heads))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlc_compiler::span::MemoryLoader;

    #[test]
    fn channel_affine_runs_natively_and_matches_the_plain_model() {
        let spec = "name: t\ninput: [3, 4, 5]\ngraph:\n  - t: channel_affine(scale=[0.458, 0.448, 0.45], shift=[-0.03, -0.088, -0.188])\n  - relu\n";
        let loader = MemoryLoader([("t.yaml".to_string(), spec.to_string())].into_iter().collect());
        let graph = tlc_compiler::compile("t.yaml", &loader, &tlc_compiler::Options::default()).graph.unwrap();
        let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
        let x = Tensor::arange(0u32, 120, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let x = ((x.reshape((2, 3, 4, 5)).unwrap() - 50.0).unwrap() * 0.1).unwrap();
        let want: Vec<f32> = model.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let opt = model.optimized().unwrap();
        assert!(fast::channel_affine(&x, &[1.0; 3], &[0.0; 3], None).unwrap().is_some(), "the fast kernel applies");
        let got: Vec<f32> = opt.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want);
        assert!(want.iter().all(|&v| v >= 0.0) && want.iter().any(|&v| v > 0.0));
    }
}
