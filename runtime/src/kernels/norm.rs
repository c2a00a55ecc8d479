//! Normalisations, softmax and attention.

use candle_core::{bail, Result, Tensor, D};

fn check_vec(op: &str, what: &str, t: &Tensor, c: usize) -> Result<()> {
    if t.dims() != [c] {
        bail!("{op}: {what} has shape {:?}, expected [{c}]", t.dims())
    }
    Ok(())
}

/// Normalises `x` over `dim` (biased variance), then applies `weight`/`bias` already
/// shaped to broadcast against `x`.
fn normalize(x: &Tensor, dim: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dim)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// LayerNorm over the channel dim of NCHW `x` at every pixel (ConvNeXt's `LayerNorm2d`),
/// `weight`/`bias` of shape `[C]`.
pub fn layer_norm_channels(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    check_vec("layer_norm_channels", "weight", weight, c)?;
    check_vec("layer_norm_channels", "bias", bias, c)?;
    let w = weight.reshape((1, c, 1, 1))?;
    let b = bias.reshape((1, c, 1, 1))?;
    normalize(x, 1, &w, &b, eps)
}

/// LayerNorm over the last dim of `x` (any rank >= 1), `weight`/`bias` of shape `[last]`.
pub fn layer_norm_last(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.rank() == 0 {
        bail!("layer_norm_last: scalar input")
    }
    let c = x.dim(D::Minus1)?;
    check_vec("layer_norm_last", "weight", weight, c)?;
    check_vec("layer_norm_last", "bias", bias, c)?;
    normalize(x, x.rank() - 1, weight, bias, eps)
}

/// Inference BatchNorm of `x` shaped NCHW or (N, C):
/// `(x - running_mean) / sqrt(running_var + eps) * weight + bias`, folded to one scale/shift.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = match x.rank() {
        2 | 4 => x.dim(1)?,
        _ => bail!(
            "batch_norm_eval: expected NCHW or (N, C), got {:?}",
            x.dims()
        ),
    };
    for (what, t) in [
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        check_vec("batch_norm_eval", what, t, c)?;
    }
    let scale = (running_var + eps)?.sqrt()?.recip()?.mul(weight)?;
    let shift = bias.sub(&running_mean.mul(&scale)?)?;
    let shape: Vec<usize> = if x.rank() == 4 {
        vec![1, c, 1, 1]
    } else {
        vec![1, c]
    };
    x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
        .broadcast_add(&shift.reshape(shape.as_slice())?)
}

/// Numerically stable softmax over the last dim (max-subtracted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 0 {
        bail!("softmax_last: scalar input")
    }
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Scaled dot-product attention `softmax(q k^T / sqrt(d) + bias) v` with `q` (B, H, L, d),
/// `k` (B, H, S, d), `v` (B, H, S, dv) and an optional additive `bias` broadcastable to
/// (B, H, L, S) (e.g. Swin's relative position bias or a mask). Returns (B, H, L, dv).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, _l, d) = q.dims4()?;
    let (bk, hk, s, dk) = k.dims4()?;
    let (bv, hv, sv, _) = v.dims4()?;
    if (bk, hk, dk) != (b, h, d) || (bv, hv, sv) != (b, h, s) || d == 0 {
        bail!(
            "attention: q {:?}, k {:?}, v {:?} are incompatible",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    let scores = (scores * (1.0 / (d as f64).sqrt()))?;
    let scores = match bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    softmax_last(&scores)?.matmul(&v.contiguous()?)
}

#[cfg(test)]
#[rustfmt::skip]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use crate::kernels::testutil::*;
    // Expected values computed with PyTorch 2.x (F.layer_norm, F.batch_norm, torch.softmax, F.scaled_dot_product_attention).
// ln_channels: shape [2, 3, 2, 2]
const LN_CHANNELS: &[f32] = &[-0.53198868, -0.11052864, 0.155258492, 0.299609333, 0.377801299, 0.271305233, 0.110782966, -0.0185068026, -0.17253834, -0.26034379, -0.277401477, -0.269384176, -0.74148643, -0.814777136, -0.866136014, -0.888955653, -0.223133877, -0.119298413, -0.0105860569, 0.120815024, 0.139454305, 0.119709983, 0.0911206678, 0.0443147458];
const LN_CHANNELS_SHAPE: &[usize] = &[2, 3, 2, 2];
// ln_last: shape [2, 3, 4]
const LN_LAST: &[f32] = &[-0.90777117, -0.273414314, 0.0291443765, -0.0865128562, 0.310064495, 0.114640728, -0.0906751752, 0.211736426, 0.497978002, -0.00807338487, -0.145318717, 0.178765476, -0.6101349, -0.453085184, -0.0544956177, -0.132377863, -0.874223173, -0.303628206, 0.0177442525, -0.0959923193, -0.00426161056, 0.222077861, -0.0186432041, 0.22456558];
const LN_LAST_SHAPE: &[usize] = &[2, 3, 4];
// bn4: shape [2, 3, 2, 2]
const BN4: &[f32] = &[-0.195211381, -0.0402214751, 0.0878595039, 0.171696454, 0.167409405, 0.143132433, 0.0758633167, -0.025293367, -0.0536622889, -0.107567102, -0.155801117, -0.191836089, -0.671530306, -0.669493616, -0.609196842, -0.498800755, -0.263473362, -0.1380606, -0.0175818168, 0.0816567689, 0.0725083575, 0.0816226825, 0.0708018467, 0.0415104106];
const BN4_SHAPE: &[usize] = &[2, 3, 2, 2];
// bn2: shape [2, 3]
const BN2: &[f32] = &[-0.195211053, -0.0196017846, 0.0440733358, 0.171842635, 0.16754137, 0.071237497];
const BN2_SHAPE: &[usize] = &[2, 3];
// softmax_big: shape [2, 5]
const SOFTMAX_BIG: &[f32] = &[0.0, 0.0, 0.0, 1.13970431e-28, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
const SOFTMAX_BIG_SHAPE: &[usize] = &[2, 5];
// softmax: shape [2, 3, 4]
const SOFTMAX: &[f32] = &[0.15070115, 0.214508981, 0.287179768, 0.347610056, 0.306207329, 0.28522104, 0.23428452, 0.174287096, 0.386867523, 0.26831308, 0.19339259, 0.151426777, 0.215548903, 0.216551229, 0.248434156, 0.319465727, 0.138132334, 0.199333891, 0.283530891, 0.379002929, 0.25889653, 0.275420845, 0.255914658, 0.209767923];
const SOFTMAX_SHAPE: &[usize] = &[2, 3, 4];
// attn: shape [1, 2, 3, 3]
const ATTN: &[f32] = &[0.287908584, 0.21660009, 0.115975738, 0.0737835467, 0.00420617312, -0.0659404993, 0.0914606154, 0.0905648768, 0.0774117261, 0.61307478, 0.572515905, 0.45446986, 0.0960301608, 0.0447277874, -0.0126282871, -0.0502204075, 0.00716072321, 0.0635727197];
const ATTN_SHAPE: &[usize] = &[1, 2, 3, 3];
// attn_nobias: shape [1, 2, 3, 3]
const ATTN_NOBIAS: &[f32] = &[0.248843491, 0.147108227, 0.0254625753, 0.108217247, 0.060912814, 0.00536408275, 0.0215919018, 0.0208284855, 0.0172459781, 0.646968484, 0.599415421, 0.470734447, 0.0482210964, 0.0396373048, 0.0256887823, -0.0267041922, -0.0271826684, -0.0239821523];
const ATTN_NOBIAS_SHAPE: &[usize] = &[1, 2, 3, 3];

    #[test]
    fn layer_norms() {
        let y = layer_norm_channels(&sin_input(&[2, 3, 2, 2]), &cos_input(&[3], 0.5), &cos_input(&[3], -0.2), 1e-6).unwrap();
        assert_close(&y, LN_CHANNELS_SHAPE, LN_CHANNELS);
        let y = layer_norm_last(&sin_input(&[2, 3, 4]), &cos_input(&[4], 0.5), &cos_input(&[4], -0.2), 1e-5).unwrap();
        assert_close(&y, LN_LAST_SHAPE, LN_LAST);
        assert!(layer_norm_last(&sin_input(&[2, 3, 4]), &cos_input(&[3], 0.5), &cos_input(&[4], -0.2), 1e-5).is_err());
    }

    #[test]
    fn batch_norm() {
        let (w, b, rm) = (cos_input(&[3], 0.5), cos_input(&[3], -0.2), cos_input(&[3], 0.1));
        let rv = (cos_input(&[3], 0.25) + 1.0).unwrap();
        let y = batch_norm_eval(&sin_input(&[2, 3, 2, 2]), &w, &b, &rm, &rv, 1e-3).unwrap();
        assert_close(&y, BN4_SHAPE, BN4);
        let y = batch_norm_eval(&sin_input(&[2, 3]), &w, &b, &rm, &rv, 1e-5).unwrap();
        assert_close(&y, BN2_SHAPE, BN2);
        assert!(batch_norm_eval(&sin_input(&[2, 3, 4]), &w, &b, &rm, &rv, 1e-5).is_err());
    }

    #[test]
    fn softmax() {
        let y = softmax_last(&(sin_input(&[2, 5]) * 1000.0).unwrap()).unwrap();
        assert_close(&y, SOFTMAX_BIG_SHAPE, SOFTMAX_BIG);
        let y = softmax_last(&sin_input(&[2, 3, 4])).unwrap();
        assert_close(&y, SOFTMAX_SHAPE, SOFTMAX);
    }

    #[test]
    fn attention_matches_sdpa() {
        let (q, k, v) = (sin_input(&[1, 2, 3, 4]), cos_input(&[1, 2, 5, 4], 1.0), sin_input(&[1, 2, 5, 3]));
        let bias = cos_input(&[2, 3, 5], 0.3);
        assert_close(&attention(&q, &k, &v, Some(&bias)).unwrap(), ATTN_SHAPE, ATTN);
        assert_close(&attention(&q, &k, &v, None).unwrap(), ATTN_NOBIAS_SHAPE, ATTN_NOBIAS);
        assert!(attention(&q, &v, &v, None).is_err());
    }
}
