"""PyTorch reference gradients for tests/gradients.rs.

Run with any Python that has torch (CPU is enough):  python tests/gradients_ref.py
and paste the printed table over `REF` in tests/gradients.rs.

Every input is `amp * sin(a * i + b)` over the flat index i, computed in float64 and rounded
to float32 (the Rust test builds the same numbers); the loss is `sum(out * cos(0.91 * i + 0.3))`
over the flat output. Gradients are computed in float64 from the float32-rounded inputs and
summarised per tensor as [sum, sum of squares, dot with sin(2.1 i + 0.3), dot with
cos(0.71 i), and the entries at (k * 7919 + 13) % n for k = 0..4].
"""
import math

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def gen(shape, a, b, amp):
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.float64)
    v = (amp * torch.sin(a * i + b)).float().double()
    return v.reshape(shape).requires_grad_(True)


def loss_weights(shape):
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.float64)
    return torch.cos(0.91 * i + 0.3).reshape(shape)


def stats(g):
    g = g.detach().flatten()
    n = g.numel()
    i = torch.arange(n, dtype=torch.float64)
    out = [g.sum(), (g * g).sum(), (g * torch.sin(2.1 * i + 0.3)).sum(), (g * torch.cos(0.71 * i)).sum()]
    out += [g[(k * 7919 + 13) % n] for k in range(4)]
    return [float(v) for v in out]


ROWS = []


def case(name, f, **inputs):
    y = f(**inputs)
    (y * loss_weights(y.shape)).sum().backward()
    for k, t in inputs.items():
        s = ", ".join(f"{v:.12e}" for v in stats(t.grad))
        ROWS.append(f'    ("{name}", "{k}", [{s}]),')


def x_(shape):
    return gen(shape, 0.37, 0.1, 1.0)


def w_(shape, amp=0.5):
    return gen(shape, 0.53, 0.2, amp)


def b_(shape):
    return gen(shape, 1.3, 0.7, 0.2)


# --- convolution ---------------------------------------------------------------------------
case("conv_same_s2", lambda x, w, b: F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, stride=2), x=x_([2, 3, 8, 8]), w=w_([4, 3, 3, 3]), b=b_([4]))
case("conv_same_s2_odd", lambda x, w: F.conv2d(F.pad(x, (1, 1, 1, 1)), w, stride=2), x=x_([2, 3, 7, 7]), w=w_([4, 3, 3, 3]))
case("conv_same_k5_s2", lambda x, w, b: F.conv2d(F.pad(x, (1, 2, 1, 2)), w, b, stride=2), x=x_([1, 2, 8, 8]), w=w_([3, 2, 5, 5]), b=b_([3]))
case("conv_dil2", lambda x, w, b: F.conv2d(x, w, b, padding=2, dilation=2), x=x_([1, 2, 7, 7]), w=w_([3, 2, 3, 3]), b=b_([3]))
case("conv_g2_s21_d12", lambda x, w: F.conv2d(F.pad(x, (2, 2, 1, 1)), w, stride=(2, 1), dilation=(1, 2), groups=2), x=x_([1, 4, 7, 8]), w=w_([6, 2, 3, 3]))
case("conv_1x1_s2", lambda x, w: F.conv2d(x, w, stride=2), x=x_([2, 4, 6, 6]), w=w_([5, 4, 1, 1]))
case("dw_same_k5_s2", lambda x, w: F.conv2d(F.pad(x, (1, 2, 1, 2)), w, stride=2, groups=4), x=x_([2, 4, 8, 8]), w=w_([4, 1, 5, 5]))
case("dw_k3_s1", lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4), x=x_([2, 4, 6, 6]), w=w_([4, 1, 3, 3]), b=b_([4]))
case("dw_k3_d2", lambda x, w: F.conv2d(x, w, padding=2, dilation=2, groups=3), x=x_([1, 3, 7, 7]), w=w_([3, 1, 3, 3]))

# --- normalisation -------------------------------------------------------------------------
def bn_train(x, w, b):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-3)


case("bn_train", bn_train, x=x_([3, 4, 5, 5]), w=w_([4]), b=b_([4]))
case("bn_train_2d", bn_train, x=x_([6, 5]), w=w_([5]), b=b_([5]))
case("ln_last", lambda x, w, b: F.layer_norm(x, (8,), w, b, eps=1e-5), x=x_([2, 3, 8]), w=w_([8]), b=b_([8]))
case("ln_channels", lambda x, w, b: F.layer_norm(x.permute(0, 2, 3, 1), (4,), w, b, eps=1e-6).permute(0, 3, 1, 2), x=x_([2, 4, 3, 3]), w=w_([4]), b=b_([4]))

# --- pooling -------------------------------------------------------------------------------
case("max_k3_s2_p1_ceil", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), x=x_([2, 2, 8, 8]))
case("max_k3_s2_p1", lambda x: F.max_pool2d(x, 3, 2, 1), x=x_([2, 2, 7, 7]))
case("max_k3_s2_ceil", lambda x: F.max_pool2d(x, 3, 2, 0, ceil_mode=True), x=x_([1, 2, 8, 8]))
case("max_k2_s2", lambda x: F.max_pool2d(x, 2, 2), x=x_([2, 2, 6, 6]))
case("max_k3_s1_d2", lambda x: F.max_pool2d(x, 3, 1, 1, dilation=2), x=x_([1, 2, 7, 7]))
case("avg_k3_s1_p1_incl", lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=True), x=x_([2, 2, 6, 6]))
case("avg_k3_s1_p1_excl", lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x=x_([2, 2, 6, 6]))
case("avg_k3_s2_p1_ceil_excl", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), x=x_([1, 2, 8, 8]))
case("avg_k2_s2", lambda x: F.avg_pool2d(x, 2, 2), x=x_([2, 2, 6, 6]))
case("adaptive_7_to_3", lambda x: F.adaptive_avg_pool2d(x, 3), x=x_([2, 3, 7, 7]))
case("adaptive_6_to_3", lambda x: F.adaptive_avg_pool2d(x, 3), x=x_([1, 3, 6, 6]))
case("global_avg", lambda x: x.mean((2, 3), keepdim=True), x=x_([2, 3, 5, 5]))
case("global_max", lambda x: x.amax((2, 3), keepdim=True), x=x_([2, 3, 5, 5]))

# --- activations ---------------------------------------------------------------------------
for name, f in [
    ("relu", F.relu), ("relu6", F.relu6), ("leaky01", lambda x: F.leaky_relu(x, 0.1)), ("silu", F.silu),
    ("gelu", F.gelu), ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
]:
    case("act_" + name, lambda x, f=f: f(x), x=gen([64], 0.37, 0.1, 7.0))

# --- softmax, linear, attention ------------------------------------------------------------
case("softmax_last", lambda x: torch.softmax(2.0 * x, -1) * 1.0, x=x_([2, 3, 5]))
case("softmax_axis1", lambda x: torch.softmax(x, 1), x=x_([2, 3, 5]))
case("linear", lambda x, w, b: F.linear(x, w, b), x=x_([2, 3, 5]), w=w_([4, 5]), b=b_([4]))


def mha(x, in_w, in_b, out_w, out_b):
    d = x.shape[-1]
    y, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), d, 2, in_w, in_b, None, None, False, 0.0, out_w, out_b, training=False, need_weights=False
    )
    return y.transpose(0, 1)


# Through a spec: input [8, 2, 2] -> reshape(8, -1) -> permute(0, 2, 1) -> self_attention(2).
case("self_attention", lambda x, **p: mha(x.reshape(2, 8, 4).permute(0, 2, 1), **p), x=x_([2, 8, 2, 2]), in_w=w_([24, 8]), in_b=b_([24]), out_w=gen([8, 8], 0.61, 0.4, 0.5), out_b=gen([8], 0.83, 0.1, 0.2))


def rel_index(ws):
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    cf = torch.flatten(coords, 1)
    rc = (cf[:, :, None] - cf[:, None, :]).permute(1, 2, 0).contiguous()
    rc[:, :, 0] += ws - 1
    rc[:, :, 1] += ws - 1
    rc[:, :, 0] *= 2 * ws - 1
    return rc.sum(-1).flatten()


def window_attention(heads, ws, shift):
    # torchvision.models.swin_transformer.shifted_window_attention (v1), transcribed.
    def f(x, qkv_w, qkv_b, proj_w, proj_b, table):
        B, H, W, C = x.shape
        t = ws * ws
        bias = table[rel_index(ws)].view(t, t, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        pad_r = (ws - W % ws) % ws
        pad_b = (ws - H % ws) % ws
        xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, pH, pW, _ = xp.shape
        s = [shift, shift]
        if ws >= pH:
            s[0] = 0
        if ws >= pW:
            s[1] = 0
        if sum(s) > 0:
            xp = torch.roll(xp, shifts=(-s[0], -s[1]), dims=(1, 2))
        nwin = (pH // ws) * (pW // ws)
        xw = xp.view(B, pH // ws, ws, pW // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nwin, t, C)
        qkv = F.linear(xw, qkv_w, qkv_b).reshape(xw.size(0), t, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * (C // heads) ** -0.5
        attn = q.matmul(k.transpose(-2, -1)) + bias
        if sum(s) > 0:
            mask = xp.new_zeros((pH, pW))
            hs = ((0, -ws), (-ws, -s[0]), (-s[0], None))
            wsl = ((0, -ws), (-ws, -s[1]), (-s[1], None))
            c = 0
            for h in hs:
                for w in wsl:
                    mask[h[0]:h[1], w[0]:w[1]] = c
                    c += 1
            mask = mask.view(pH // ws, ws, pW // ws, ws).permute(0, 2, 1, 3).reshape(nwin, t)
            mask = mask.unsqueeze(1) - mask.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
            attn = attn.view(B, nwin, heads, t, t) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, t, t)
        attn = F.softmax(attn, dim=-1)
        o = attn.matmul(v).transpose(1, 2).reshape(xw.size(0), t, C)
        o = F.linear(o, proj_w, proj_b)
        o = o.view(B, pH // ws, pW // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, pH, pW, C)
        if sum(s) > 0:
            o = torch.roll(o, shifts=(s[0], s[1]), dims=(1, 2))
        return o[:, :H, :W, :].contiguous()

    return f


for name, (hw, shift) in {"window_attention_shift": (6, 1), "window_attention_pad": (5, 0), "window_attention_pad_shift": (5, 1)}.items():
    # Through a spec: input [8, H, W] -> permute(0, 2, 3, 1) -> window_attention(2, window=3, shift=s).
    case(name, lambda x, f=window_attention(2, 3, shift), **p: f(x.permute(0, 2, 3, 1), **p), x=x_([1, 8, hw, hw]), qkv_w=w_([24, 8]), qkv_b=b_([24]), proj_w=gen([8, 8], 0.61, 0.4, 0.5), proj_b=gen([8], 0.83, 0.1, 0.2), table=gen([25, 2], 0.47, 0.9, 0.5))

# --- upsample and combining ops ------------------------------------------------------------
case("upsample2", lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), x=x_([1, 2, 3, 4]))
# x feeds both the upsample and a second branch (as in an FPN): gradients from both must add.
case("upsample2_shared", lambda x: torch.cat([F.interpolate(x, scale_factor=2, mode="nearest").flatten(), (x * 3.0).flatten()]), x=x_([1, 2, 3, 4]))
case("upsample2_shared_rev", lambda x: torch.cat([(x * 3.0).flatten(), F.interpolate(x, scale_factor=2, mode="nearest").flatten()]), x=x_([1, 2, 3, 4]))
case("concat", lambda a, b: torch.cat([a, b], 1), a=x_([2, 3, 2, 2]), b=w_([2, 2, 2, 2]))
case("add3", lambda a, b, c: a + b + c, a=x_([2, 3, 2, 2]), b=w_([2, 3, 2, 2]), c=b_([2, 3, 2, 2]))
case("mul_se", lambda a, s: a * s, a=x_([2, 3, 4, 4]), s=w_([2, 3, 1, 1]))

print("const REF: &[(&str, &str, [f64; 8])] = &[")
print("\n".join(ROWS))
print("];")
