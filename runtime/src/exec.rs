//! Evaluation of one IR op on candle tensors (inference semantics). Tensors carry the batch
//! as dim 0; the IR's per-sample shapes follow after it.

use crate::kernels as k;
use candle_core::{IndexOp, Result, Tensor};
use tlc_compiler::ir::{Activation, NormAxis, Op};
use tlc_compiler::ops::conv::resolve_padding;
use tlc_compiler::ops::{relative_position_index, shift_mask, window_shifts};

/// Parameters of one node, looked up by suffix (`weight`, `bias`, ...; `""` for the node's own).
pub trait ParamSource {
    /// The tensor `<node>.<suffix>` (or `<node>` for an empty suffix).
    fn param(&self, suffix: &str) -> Result<&Tensor>;
}

/// The parameters of one node in a name-to-tensor map (`<node>.<suffix>`).
pub struct NodeParams<'a> {
    /// Node name.
    pub node: &'a str,
    /// All parameters by full name.
    pub params: &'a std::collections::HashMap<String, Tensor>,
}

impl ParamSource for NodeParams<'_> {
    fn param(&self, suffix: &str) -> Result<&Tensor> {
        let name = if suffix.is_empty() { self.node.to_string() } else { format!("{}.{suffix}", self.node) };
        self.params.get(&name).ok_or_else(|| candle_core::Error::Msg(format!("parameter `{name}` is not loaded")))
    }
}

/// Applies activation `a` to `x` (the one activation dispatch of the plain, optimized and
/// training forwards).
pub fn activation(a: Activation, x: &Tensor) -> Result<Tensor> {
    match a {
        Activation::Relu => x.relu(),
        Activation::Relu6 => k::relu6(x),
        Activation::LeakyRelu(s) => k::leaky_relu(x, s as f32),
        Activation::Silu => k::silu(x),
        Activation::Gelu => k::gelu_erf(x),
        Activation::HardSwish => k::hard_swish(x),
        Activation::HardSigmoid => k::hard_sigmoid(x),
        Activation::Sigmoid => k::sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Mish => k::mish(x),
    }
}

/// Applies `a`, if any, to `x`.
pub fn maybe_activation(a: Option<Activation>, x: Tensor) -> Result<Tensor> {
    match a {
        Some(a) => activation(a, &x),
        None => Ok(x),
    }
}

/// Linear layer on the last dim: `x @ w^T + b`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inf = *dims.last().unwrap();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inf))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out)
}

/// Evaluates `op` on its inputs.
pub fn eval(op: &Op, ins: &[Tensor], p: &dyn ParamSource) -> Result<Tensor> {
    let x = &ins[0];
    Ok(match op {
        Op::Input => x.clone(),
        Op::Conv { stride, padding, dilation, groups, bias, kernel, .. } => {
            let (_, _, h, w) = x.dims4()?;
            let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
            let b = if *bias { Some(p.param("bias")?) } else { None };
            k::conv2d(x, p.param("weight")?, b, *stride, pad, *dilation, *groups)?
        }
        Op::BatchNorm { eps } => k::batch_norm_eval(x, p.param("weight")?, p.param("bias")?, p.param("running_mean")?, p.param("running_var")?, *eps)?,
        Op::LayerNorm { eps, axis: NormAxis::Last } => k::layer_norm_last(x, p.param("weight")?, p.param("bias")?, *eps)?,
        Op::LayerNorm { eps, axis: NormAxis::Channels } => k::layer_norm_channels(x, p.param("weight")?, p.param("bias")?, *eps)?,
        Op::Act(a) => activation(*a, x)?,
        Op::Softmax { axis } => {
            let rank = x.rank() as isize;
            let d = if *axis < 0 { rank + axis } else { *axis } as usize;
            candle_nn::ops::softmax(x, d)?
        }
        Op::Linear { bias, .. } => linear(x, p.param("weight")?, if *bias { Some(p.param("bias")?) } else { None })?,
        Op::MaxPool { kernel, stride, padding, dilation, ceil } => {
            let (_, _, h, w) = x.dims4()?;
            let pad = resolve_padding(*padding, [h, w], *kernel, *stride, *dilation);
            k::max_pool2d(x, *kernel, *stride, pad, *dilation, *ceil)?
        }
        Op::AvgPool { kernel, stride, padding, ceil, count_include_pad } => {
            let (_, _, h, w) = x.dims4()?;
            let pad = resolve_padding(*padding, [h, w], *kernel, *stride, [1, 1]);
            k::avg_pool2d(x, *kernel, *stride, pad, *ceil, *count_include_pad)?
        }
        Op::AdaptiveAvgPool { size } => k::adaptive_avg_pool2d(x, *size)?,
        Op::GlobalPool { max } => {
            if *max {
                x.max_keepdim(3)?.max_keepdim(2)?
            } else {
                x.mean_keepdim(3)?.mean_keepdim(2)?
            }
        }
        Op::Flatten { start } => x.flatten_from(*start)?,
        Op::Reshape { dims } => {
            let sample = tlc_compiler::ops::reshape_dims(dims, &x.dims()[1..]).map_err(|e| candle_core::Error::Msg(format!("reshape: {}", e.message)))?;
            let mut shape = vec![x.dim(0)?];
            shape.extend(sample);
            x.reshape(shape)?
        }
        Op::Permute { perm } => x.permute(perm.clone())?.contiguous()?,
        Op::Select { dim, index } => x.narrow(*dim, *index, 1)?.squeeze(*dim)?,
        Op::Dropout { .. } | Op::Identity | Op::YoloHead { .. } => x.clone(),
        Op::Add => {
            let mut acc = x.clone();
            for y in &ins[1..] {
                acc = (acc + y)?;
            }
            acc
        }
        Op::Mul => {
            let mut acc = x.clone();
            for y in &ins[1..] {
                acc = acc.broadcast_mul(y)?;
            }
            acc
        }
        Op::Concat { dim } => Tensor::cat(ins, *dim)?,
        Op::Chunk { chunks, index, dim } => {
            let size = x.dim(*dim)? / chunks;
            x.narrow(*dim, index * size, size)?.contiguous()?
        }
        Op::Upsample { scale } => k::upsample_nearest(x, *scale)?,
        Op::ZeroPad { pad } => k::pad2d(x, *pad, 0.0)?,
        Op::ChannelAffine { scale, shift } => channel_affine(x, scale, shift)?,
        Op::Scale { .. } => x.broadcast_mul(p.param("")?)?,
        Op::ClassToken => {
            let n = x.dim(0)?;
            let t = p.param("")?;
            let t = t.broadcast_as((n, 1, t.dim(2)?))?.contiguous()?;
            Tensor::cat(&[&t, x], 1)?
        }
        Op::PosEmbed => x.broadcast_add(p.param("")?)?,
        Op::SelfAttention { heads } => self_attention(x, *heads, p)?,
        Op::WindowAttention { heads, window, shift } => window_attention(x, *heads, *window, *shift, p)?,
        Op::PatchMerge => patch_merge(x)?,
        Op::DetectV8 { classes, reg_max, strides } => detect_v8(ins, *classes, *reg_max, strides, p)?,
    })
}

/// `x * scale[c] + shift[c]` over dim 1, as two rounded f32 ops like PyTorch's
/// `x * s + t` with Python-float constants (torchvision Inception-v3's `_transform_input`).
fn channel_affine(x: &Tensor, scale: &[f64], shift: &[f64]) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = scale.len();
    let per_channel = |v: &[f64]| Tensor::from_vec(v.iter().map(|&a| a as f32).collect::<Vec<f32>>(), shape.clone(), x.device())?.to_dtype(x.dtype());
    x.broadcast_mul(&per_channel(scale)?)?.broadcast_add(&per_channel(shift)?)
}

/// `nn.MultiheadAttention` self-attention, batch first, on (N, L, D).
fn self_attention(x: &Tensor, heads: usize, p: &dyn ParamSource) -> Result<Tensor> {
    self_attention_with(x, heads, &|x, w, b| linear(x, p.param(w)?, Some(p.param(b)?)), &|_| Ok(None))
}

/// Self-attention with `linear(x, weight name, bias name)` for the projections (names are
/// parameter suffixes of the node) and `fused(qkv)` for the attention of the packed queries,
/// keys and values (`None`: the portable path here).
pub fn self_attention_with(
    x: &Tensor,
    heads: usize,
    linear: &dyn Fn(&Tensor, &str, &str) -> Result<Tensor>,
    fused: &dyn Fn(&Tensor) -> Result<Option<Tensor>>,
) -> Result<Tensor> {
    let (n, l, d) = x.dims3()?;
    let hd = d / heads;
    let qkv = linear(x, "in_proj_weight", "in_proj_bias")?;
    let o = match fused(&qkv)? {
        Some(o) => o,
        None => {
            let split = |i: usize| -> Result<Tensor> { qkv.narrow(2, i * d, d)?.reshape((n, l, heads, hd))?.transpose(1, 2)?.contiguous() };
            let (q, kk, v) = (split(0)?, split(1)?, split(2)?);
            k::attention(&q, &kk, &v, None)?.transpose(1, 2)?.reshape((n, l, d))?
        }
    };
    linear(&o, "out_proj.weight", "out_proj.bias")
}

fn roll2(x: &Tensor, s0: isize, s1: isize) -> Result<Tensor> {
    // torch.roll over dims 1 and 2 of (B, H, W, C).
    let roll = |x: &Tensor, dim: usize, s: isize| -> Result<Tensor> {
        let n = x.dim(dim)? as isize;
        let s = s.rem_euclid(n) as usize;
        if s == 0 {
            return Ok(x.clone());
        }
        let n = n as usize;
        Tensor::cat(&[x.narrow(dim, n - s, s)?, x.narrow(dim, 0, n - s)?], dim)
    };
    roll(&roll(x, 1, s0)?, 2, s1)
}

/// torchvision `shifted_window_attention` on (B, H, W, C).
fn window_attention(x: &Tensor, heads: usize, ws: usize, shift: usize, p: &dyn ParamSource) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let pad_r = (ws - w % ws) % ws;
    let pad_b = (ws - h % ws) % ws;
    let mut xp = x.clone();
    if pad_r > 0 {
        xp = xp.pad_with_zeros(2, 0, pad_r)?;
    }
    if pad_b > 0 {
        xp = xp.pad_with_zeros(1, 0, pad_b)?;
    }
    let (ph, pw) = (h + pad_b, w + pad_r);
    let (s0, s1) = window_shifts(ph, pw, ws, shift);
    let shifted = s0 + s1 > 0;
    if shifted {
        xp = roll2(&xp, -(s0 as isize), -(s1 as isize))?;
    }
    let (nh, nw) = (ph / ws, pw / ws);
    let nwin = nh * nw;
    let t = ws * ws;
    let xw = xp.reshape((b, nh, ws, nw, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((b * nwin, t, c))?;
    let qkv = linear(&xw, p.param("qkv.weight")?, Some(p.param("qkv.bias")?))?;
    let hd = c / heads;
    let qkv = qkv.reshape((b * nwin, t, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
    let (q, kk, v) = (qkv.i(0)?, qkv.i(1)?, qkv.i(2)?);
    // Relative position bias (1, heads, t, t).
    let table = p.param("relative_position_bias_table")?;
    let idx = Tensor::from_vec(relative_position_index(ws), t * t, table.device())?;
    let bias = table.index_select(&idx, 0)?.reshape((t, t, heads))?.permute((2, 0, 1))?.contiguous()?.unsqueeze(0)?;
    let bias = if shifted {
        let mask = Tensor::from_vec(shift_mask(ph, pw, ws, s0, s1), (nwin, t, t), table.device())?;
        // (b, nwin, heads, t, t) flattened to (b*nwin, heads, t, t)
        let full = bias.unsqueeze(0)?.broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?; // (1, nwin, heads, t, t)
        full.broadcast_as((b, nwin, heads, t, t))?.contiguous()?.reshape((b * nwin, heads, t, t))?
    } else {
        bias
    };
    let o = k::attention(&q, &kk, &v, Some(&bias))?; // (b*nwin, heads, t, hd)
    let o = o.transpose(1, 2)?.contiguous()?.reshape((b * nwin, t, c))?;
    let o = linear(&o, p.param("proj.weight")?, Some(p.param("proj.bias")?))?;
    let mut y = o.reshape((b, nh, nw, ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((b, ph, pw, c))?;
    if shifted {
        y = roll2(&y, s0 as isize, s1 as isize)?;
    }
    y.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()
}

/// torchvision `_patch_merging_pad`: (B, H, W, C) to (B, H/2, W/2, 4C).
fn patch_merge(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let mut xp = x.clone();
    if w % 2 == 1 {
        xp = xp.pad_with_zeros(2, 0, 1)?;
    }
    if h % 2 == 1 {
        xp = xp.pad_with_zeros(1, 0, 1)?;
    }
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    // (B, h2, 2, w2, 2, C): element [i, dy, j, dx]
    let r = xp.reshape((b, h2, 2, w2, 2, c))?;
    let part = |dy: usize, dx: usize| -> Result<Tensor> { r.i((.., .., dy, .., dx, ..)) };
    Tensor::cat(&[part(0, 0)?, part(1, 0)?, part(0, 1)?, part(1, 1)?], 3)?.contiguous()
}

/// Ultralytics `Detect` inference decode: DFL boxes (xywh in input pixels) and sigmoid scores.
fn detect_v8(ins: &[Tensor], classes: usize, reg_max: usize, strides: &[usize], p: &dyn ParamSource) -> Result<Tensor> {
    let n = ins[0].dim(0)?;
    let no = 4 * reg_max + classes;
    let dev = ins[0].device();
    let mut flat = Vec::new();
    let mut anchors = Vec::new();
    let mut stride_v = Vec::new();
    for (x, &s) in ins.iter().zip(strides) {
        let (_, _, h, w) = x.dims4()?;
        flat.push(x.reshape((n, no, h * w))?);
        for yy in 0..h {
            for xx in 0..w {
                anchors.push((xx as f32 + 0.5, yy as f32 + 0.5));
                stride_v.push(s as f32);
            }
        }
    }
    let a = anchors.len();
    let x = Tensor::cat(&flat, 2)?;
    let boxr = x.narrow(1, 0, 4 * reg_max)?;
    let cls = x.narrow(1, 4 * reg_max, classes)?;
    // DFL: softmax over the reg_max bins, then the 1x1 conv projection (a loaded weight).
    let prob = candle_nn::ops::softmax(&boxr.reshape((n, 4, reg_max, a))?, 2)?;
    let proj = p.param("dfl.conv.weight")?.reshape((1, 1, reg_max, 1))?;
    let dist = prob.broadcast_mul(&proj)?.sum(2)?; // (n, 4, a)
    let ax = Tensor::from_vec(anchors.iter().map(|v| v.0).collect::<Vec<_>>(), (1, 1, a), dev)?;
    let ay = Tensor::from_vec(anchors.iter().map(|v| v.1).collect::<Vec<_>>(), (1, 1, a), dev)?;
    let st = Tensor::from_vec(stride_v, (1, 1, a), dev)?;
    let lt_x = dist.narrow(1, 0, 1)?;
    let lt_y = dist.narrow(1, 1, 1)?;
    let rb_x = dist.narrow(1, 2, 1)?;
    let rb_y = dist.narrow(1, 3, 1)?;
    let x1 = ax.broadcast_sub(&lt_x)?;
    let y1 = ay.broadcast_sub(&lt_y)?;
    let x2 = ax.broadcast_add(&rb_x)?;
    let y2 = ay.broadcast_add(&rb_y)?;
    let cx = ((&x1 + &x2)? * 0.5)?;
    let cy = ((&y1 + &y2)? * 0.5)?;
    let bw = (&x2 - &x1)?;
    let bh = (&y2 - &y1)?;
    let dbox = Tensor::cat(&[cx, cy, bw, bh], 1)?.broadcast_mul(&st)?;
    Tensor::cat(&[dbox, k::sigmoid(&cls)?], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    struct NoParams;
    impl ParamSource for NoParams {
        fn param(&self, suffix: &str) -> Result<&Tensor> {
            Err(candle_core::Error::Msg(format!("no parameter `{suffix}`")))
        }
    }

    #[test]
    fn channel_affine_matches_hand_computed_values() {
        // Inception-v3's transform_input: x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5.
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let op = Op::ChannelAffine { scale: std.iter().map(|s| s / 0.5).collect(), shift: mean.iter().map(|m| (m - 0.5) / 0.5).collect() };
        let x = Tensor::from_vec(vec![1f32, -2.0, 0.0, 0.5, 2.0, -1.0], (1, 3, 1, 2), &Device::Cpu).unwrap();
        let y: Vec<f32> = eval(&op, &[x], &NoParams).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // By hand: 1*0.458-0.03, -2*0.458-0.03; 0*0.448-0.088, 0.5*0.448-0.088; 2*0.45-0.188, -1*0.45-0.188.
        let want = [0.428f32, -0.946, -0.088, 0.136, 0.712, -0.638];
        assert!(y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{y:?}");
    }
}
