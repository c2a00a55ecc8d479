import math
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# tlc's expression builtins (round, min, max, int, float, abs and len are Python's own).
ceil, floor, sqrt = math.ceil, math.floor, math.sqrt


def make_divisible(v, divisor=8, min_value=None):
    """timm / torchvision `_make_divisible`."""
    least = divisor if min_value is None else min_value
    out = max(least, math.floor((v + divisor / 2) / divisor) * divisor)
    if out < 0.9 * v:
        out += divisor
    return int(out)


# ---------------------------------------------------------------------------------------
# Window arithmetic (PyTorch's rules; TensorFlow "same" padding).
def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _pads(p):
    """tlc padding (int, [h, w], [top, bottom, left, right] or "same") as (t, b, l, r) or "same"."""
    if p == "same":
        return p
    if isinstance(p, (list, tuple)):
        return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)
    return (p, p, p, p)


def _same(n, k, s, d):
    need = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return need // 2, need - need // 2


def _resolve(p, hw, k, s, d):
    if p == "same":
        return _same(hw[0], k[0], s[0], d[0]) + _same(hw[1], k[1], s[1], d[1])
    return p


def _window_out(n, k, s, before, after, d, ceil_mode):
    num = n + before + after - (d * (k - 1) + 1)
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + before:
        out -= 1
    return out


def _window2d(hw, k, s, p, d, ceil_mode=False):
    t, b, l, r = _resolve(p, hw, k, s, d)
    return (_window_out(hw[0], k[0], s[0], t, b, d[0], ceil_mode), _window_out(hw[1], k[1], s[1], l, r, d[1], ceil_mode))


def _symmetric(p):
    return p != "same" and p[0] == p[1] and p[2] == p[3]


# ---------------------------------------------------------------------------------------
# Modules and functions the ops use.
class PadConv2d(nn.Conv2d):
    """nn.Conv2d with asymmetric [top, bottom, left, right] or TensorFlow "same" padding."""

    def __init__(self, cin, out, k, s, pads, d, groups, bias):
        super().__init__(cin, out, k, s, 0, d, groups, bias)
        self.pads = pads

    def forward(self, x):
        t, b, l, r = _resolve(self.pads, x.shape[-2:], self.kernel_size, self.stride, self.dilation)
        return super().forward(F.pad(x, (l, r, t, b)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (torchvision's ConvNeXt LayerNorm2d)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SelfAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention (batch first) used as self-attention: one input, one output."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads, batch_first=True)

    def forward(self, x):
        return super().forward(x, x, x, need_weights=False)[0]


class WindowAttention(nn.Module):
    """Swin (shifted) window attention with relative position bias (torchvision
    `ShiftedWindowAttention`, on a channels-last [N, H, W, C] map)."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]).flatten())

    def forward(self, x):
        n, h, w, c = x.shape
        ws, heads = self.window, self.heads
        x = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        ph, pw = x.shape[1], x.shape[2]
        s0 = 0 if ws >= ph else self.shift
        s1 = 0 if ws >= pw else self.shift
        if s0 + s1 > 0:
            x = torch.roll(x, shifts=(-s0, -s1), dims=(1, 2))
        nh, nw, t = ph // ws, pw // ws, ws * ws
        x = x.view(n, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(n * nh * nw, t, c)
        q, k, v = self.qkv(x).reshape(x.shape[0], t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // heads) ** -0.5).matmul(k.transpose(-2, -1))
        bias = self.relative_position_bias_table[self.relative_position_index].view(t, t, heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if s0 + s1 > 0:
            attn = attn.view(n, nh * nw, heads, t, t) + _shift_mask(ph, pw, ws, s0, s1, x).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, t, t)
        x = attn.softmax(dim=-1).matmul(v).transpose(1, 2).reshape(x.shape[0], t, c)
        x = self.proj(x).view(n, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, c)
        if s0 + s1 > 0:
            x = torch.roll(x, shifts=(s0, s1), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


def _shift_mask(ph, pw, ws, s0, s1, like):
    """Swin's mask of shifted windows: 0 within a region, -100 across regions."""
    img = like.new_zeros((ph, pw))
    count = 0
    for hs in (slice(0, -ws), slice(-ws, -s0), slice(-s0, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s1), slice(-s1, None)):
            img[hs, wsl] = count
            count += 1
    img = img.view(ph // ws, ws, pw // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = img.unsqueeze(1) - img.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _patch_merge(x):
    """torchvision `_patch_merging_pad`: [N, H, W, C] -> [N, H/2, W/2, 4C]."""
    h, w = x.shape[1], x.shape[2]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)


class DFL(nn.Module):
    """Ultralytics' distribution focal loss projection: a fixed 1x1 conv over the bins."""

    def __init__(self, bins):
        super().__init__()
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)


def _detect_v8(net, *levels, path, classes, reg_max, strides):
    """Ultralytics `Detect` decode at inference: per level [N, 4*reg_max + classes, H, W] to
    [N, 4 + classes, anchors] (box centre and size in input pixels, class probabilities)."""
    n, r = levels[0].shape[0], reg_max
    x = torch.cat([lv.reshape(n, 4 * r + classes, -1) for lv in levels], 2)
    box, cls = x.split((4 * r, classes), 1)
    dist = net.get_submodule(path + ".dfl.conv")(box.view(n, 4, r, -1).transpose(2, 1).softmax(1)).view(n, 4, -1)
    anchors, stride = [], []
    for lv, s in zip(levels, strides):
        h, w = lv.shape[2], lv.shape[3]
        sy, sx = torch.meshgrid(torch.arange(h, device=x.device) + 0.5, torch.arange(w, device=x.device) + 0.5, indexing="ij")
        anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride.append(torch.full((h * w, 1), float(s), device=x.device))
    anchors, stride = torch.cat(anchors).transpose(0, 1).unsqueeze(0), torch.cat(stride).transpose(0, 1)
    lt, rb = dist.chunk(2, 1)
    x1y1, x2y2 = anchors - lt, anchors + rb
    boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
    return torch.cat((boxes, cls.sigmoid()), 1)


def _dropout(net, x, p, depth=False):
    """Dropout, or stochastic depth (torchvision "row" mode), active in training mode."""
    if not net.training or p == 0:
        return x
    if not depth:
        return F.dropout(x, p, True)
    keep = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p) if p < 1 else x * keep


def _max_pool(x, k, s, p, d, ceil_mode):
    t, b, l, r = _resolve(p, x.shape[-2:], k, s, d)
    if _symmetric((t, b, l, r)) and 2 * t <= k[0] and 2 * l <= k[1]:
        return F.max_pool2d(x, k, s, (t, l), d, ceil_mode)
    oh, ow = _window2d(x.shape[-2:], k, s, (t, b, l, r), d, ceil_mode)
    bh = max((oh - 1) * s[0] + d[0] * (k[0] - 1) + 1 - x.shape[-2] - t, 0)
    bw = max((ow - 1) * s[1] + d[1] * (k[1] - 1) + 1 - x.shape[-1] - l, 0)
    return F.max_pool2d(F.pad(x, (l, bw, t, bh), value=float("-inf")), k, s, 0, d)


def _avg_pool(x, k, s, p, ceil_mode, count_include_pad):
    t, b, l, r = _resolve(p, x.shape[-2:], k, s, (1, 1))
    if _symmetric((t, b, l, r)) and 2 * t <= k[0] and 2 * l <= k[1]:
        return F.avg_pool2d(x, k, s, (t, l), ceil_mode, count_include_pad)
    # PyTorch's divisor rule generalised to asymmetric padding (as tlc's runtime).
    (h, w), (oh, ow) = x.shape[-2:], _window2d(x.shape[-2:], k, s, (t, b, l, r), (1, 1), ceil_mode)
    xp = F.pad(x, (l, max((ow - 1) * s[1] + k[1] - w - l, 0), t, max((oh - 1) * s[0] + k[0] - h - t, 0)))
    total = F.avg_pool2d(xp, k, s) * (k[0] * k[1])

    def div(n, kk, ss, before, after, out):
        out_d = []
        for o in range(out):
            start = o * ss - before
            end = min(start + kk, n + after)
            out_d.append(end - start if count_include_pad else max(min(end, n) - max(start, 0), 0))
        return torch.tensor(out_d, dtype=x.dtype, device=x.device)

    return total / (div(h, k[0], s[0], t, b, oh)[:, None] * div(w, k[1], s[1], l, r, ow)[None, :])


def _channel_affine(x, scale, shift):
    """x[:, c] * scale[c] + shift[c] with Python floats (torchvision Inception-v3's transform_input)."""
    return torch.cat([x[:, c : c + 1] * a + b for c, (a, b) in enumerate(zip(scale, shift))], 1)


def _add(*xs):
    out = xs[0]
    for y in xs[1:]:
        out = out + y
    return out


def _mul(*xs):
    out = xs[0]
    for y in xs[1:]:
        out = out * y
    return out


def _concat(*xs, dim):
    return torch.cat(xs, dim)


def _param_op(net, x, owner, name, how):
    p = getattr(net.get_submodule(owner), name)
    if how == "mul":
        return x * p
    if how == "add":
        return x + p
    return torch.cat([p.expand(x.shape[0], -1, -1), x], 1)


def _identity(x):
    return x


# ---------------------------------------------------------------------------------------
# The ops of the spec language. Each returns an Op whose `make(scope, name, shapes)` creates
# and registers its module (if it has parameters) and returns (function, output shape).
class Op:
    def __init__(self, make):
        self.make = make


class At:
    """A step calling the module at `path` in the network (looked up at each call, so a module
    swapped in later, such as SyncBatchNorm, is the one used)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, net, *xs):
        return net.get_submodule(self.path)(*xs)


class Fn:
    """A step calling `f(*inputs, **kw)`, or `f(net, *inputs, **kw)` when it needs the network."""

    def __init__(self, f, with_net=False, **kw):
        self.f, self.with_net, self.kw = f, with_net, kw

    def __call__(self, net, *xs):
        return self.f(net, *xs, **self.kw) if self.with_net else self.f(*xs, **self.kw)


def _fn(f, shape_of=lambda s: s[0], **kw):
    return Op(lambda scope, name, shapes: (Fn(f, **kw), tuple(shape_of(shapes))))


def _module(scope, name, module, shape):
    scope.attach(name, module)
    return At(scope.join(name)), tuple(shape)


def conv(out=None, k=1, s=1, p=0, d=1, groups=1, *, bias=True, depthwise=False):
    def make(scope, name, shapes):
        cin, h, w = shapes[0]
        c_out, g = (cin, cin) if depthwise else (out, groups)
        kk, ss, dd, pp = _pair(k), _pair(s), _pair(d), _pads(p)
        if _symmetric(pp):
            m = nn.Conv2d(cin, c_out, kk, ss, (pp[0], pp[2]), dd, g, bias)
        else:
            m = PadConv2d(cin, c_out, kk, ss, pp, dd, g, bias)
        return _module(scope, name, m, (c_out,) + _window2d((h, w), kk, ss, pp, dd))

    return Op(make)


def dwconv(k=3, s=1, p=0, d=1, *, bias=True):
    return conv(None, k, s, p, d, bias=bias, depthwise=True)


def bn(eps=1e-5):
    def make(scope, name, shapes):
        m = (nn.BatchNorm2d if len(shapes[0]) == 3 else nn.BatchNorm1d)(shapes[0][0], eps)
        return _module(scope, name, m, shapes[0])

    return Op(make)


def layernorm(eps=1e-5):
    return Op(lambda scope, name, shapes: _module(scope, name, nn.LayerNorm(shapes[0][-1], eps), shapes[0]))


def layernorm2d(eps=1e-6):
    return Op(lambda scope, name, shapes: _module(scope, name, LayerNorm2d(shapes[0][0], eps), shapes[0]))


def linear(out, *, bias=True):
    return Op(lambda scope, name, shapes: _module(scope, name, nn.Linear(shapes[0][-1], out, bias), shapes[0][:-1] + (out,)))


def relu():
    return _fn(F.relu)


def relu6():
    return _fn(F.relu6)


def leaky_relu(slope=0.01):
    return _fn(F.leaky_relu, negative_slope=slope)


def silu():
    return _fn(F.silu)


def gelu():
    return _fn(F.gelu)


def hardswish():
    return _fn(F.hardswish)


def hardsigmoid():
    return _fn(F.hardsigmoid)


def sigmoid():
    return _fn(torch.sigmoid)


def tanh():
    return _fn(torch.tanh)


def softmax(dim=-1):
    return _fn(torch.softmax, dim=dim)


def maxpool(k, s=None, p=0, d=1, *, ceil=False):
    kk, ss, pp, dd = _pair(k), _pair(k if s is None else s), _pads(p), _pair(d)
    shape = lambda sh: (sh[0][0],) + _window2d(sh[0][1:], kk, ss, pp, dd, ceil)
    return _fn(_max_pool, shape, k=kk, s=ss, p=pp, d=dd, ceil_mode=ceil)


def avgpool(k, s=None, p=0, *, ceil=False, count_include_pad=True):
    kk, ss, pp = _pair(k), _pair(k if s is None else s), _pads(p)
    shape = lambda sh: (sh[0][0],) + _window2d(sh[0][1:], kk, ss, pp, (1, 1), ceil)
    return _fn(_avg_pool, shape, k=kk, s=ss, p=pp, ceil_mode=ceil, count_include_pad=count_include_pad)


def adaptive_avgpool(size=1):
    return _fn(F.adaptive_avg_pool2d, lambda sh: (sh[0][0],) + _pair(size), output_size=_pair(size))


def global_avgpool():
    return _fn(torch.mean, lambda sh: (sh[0][0], 1, 1), dim=(2, 3), keepdim=True)


def global_maxpool():
    return _fn(torch.amax, lambda sh: (sh[0][0], 1, 1), dim=(2, 3), keepdim=True)


def flatten(start=1):
    return _fn(torch.flatten, lambda sh: sh[0][: start - 1] + (math.prod(sh[0][start - 1 :]),), start_dim=start)


def reshape(*dims, shape=None):
    dims = list(shape if shape is not None else dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims)

    def out(sh):
        known = math.prod(d for d in dims if d > 0)
        return tuple(math.prod(sh[0]) // known if d == -1 else d for d in dims)

    return Op(lambda scope, name, shapes: (Fn(_reshape, dims=out(shapes)), out(shapes)))


def _reshape(x, dims):
    return x.reshape((x.shape[0],) + tuple(dims))


def permute(*dims_, dims=None):
    perm = list(dims if dims is not None else dims_[0] if len(dims_) == 1 and isinstance(dims_[0], (list, tuple)) else dims_)
    return _fn(torch.permute, lambda sh: tuple(sh[0][i - 1] for i in perm[1:]), dims=perm)


def select(dim, index):
    return _fn(torch.select, lambda sh: sh[0][: dim - 1] + sh[0][dim:], dim=dim, index=index)


def dropout(p=0.5):
    return Op(lambda scope, name, shapes: (Fn(_dropout, True, p=p), shapes[0]))


def stochastic_depth(p=0.0):
    return Op(lambda scope, name, shapes: (Fn(_dropout, True, p=p, depth=True), shapes[0]))


def identity():
    return _fn(_identity)


def add():
    return _fn(_add)


def mul():
    return _fn(_mul, lambda sh: tuple(max(ds) for ds in zip(*sh)))


def concat(dim=1):
    def shape(sh):
        out = list(sh[0])
        out[dim - 1] = sum(s[dim - 1] for s in sh)
        return out

    return _fn(_concat, shape, dim=dim)


def chunk(chunks, index, dim=1):
    def shape(sh):
        out = list(sh[0])
        out[dim - 1] //= chunks
        return out

    return Op(lambda scope, name, shapes: (Fn(_chunk, chunks=chunks, index=index, dim=dim), tuple(shape(shapes))))


def _chunk(x, chunks, index, dim):
    return x.chunk(chunks, dim)[index]


def upsample(scale=2):
    return _fn(F.interpolate, lambda sh: (sh[0][0], sh[0][1] * scale, sh[0][2] * scale), scale_factor=float(scale), mode="nearest")


def zeropad(p):
    t, b, l, r = (p, p, p, p) if isinstance(p, int) else p
    return _fn(F.pad, lambda sh: (sh[0][0], sh[0][1] + t + b, sh[0][2] + l + r), pad=(l, r, t, b))


def channel_affine(scale, shift):
    return _fn(_channel_affine, scale=list(scale), shift=list(shift))


def _param(how, shape_of):
    def make(scope, name, shapes):
        owner, attr = scope.attach_param(name, torch.zeros(shape_of(shapes[0])))
        out = (shapes[0][0] + 1,) + shapes[0][1:] if how == "cat" else shapes[0]
        return Fn(_param_op, True, owner=owner, name=attr, how=how), out

    return Op(make)


def scale(shape):
    return _param("mul", lambda s: tuple(shape) if isinstance(shape, (list, tuple)) else (shape,))


def class_token():
    return _param("cat", lambda s: (1, 1, s[1]))


def pos_embed():
    return _param("add", lambda s: (1,) + tuple(s))


def self_attention(heads):
    return Op(lambda scope, name, shapes: _module(scope, name, SelfAttention(shapes[0][-1], heads), shapes[0]))


def window_attention(heads, window=7, shift=0):
    return Op(lambda scope, name, shapes: _module(scope, name, WindowAttention(shapes[0][-1], heads, window, shift), shapes[0]))


def patch_merge():
    return _fn(_patch_merge, lambda sh: ((sh[0][0] + 1) // 2, (sh[0][1] + 1) // 2, 4 * sh[0][2]))


def detect_v8(classes, reg_max=16, strides=(8, 16, 32)):
    def make(scope, name, shapes):
        scope.attach(name + ".dfl", DFL(reg_max))
        step = Fn(_detect_v8, True, path=scope.join(name), classes=classes, reg_max=reg_max, strides=list(strides))
        return step, (4 + classes, sum(s[1] * s[2] for s in shapes))

    return Op(make)


def _yolo_head(x):
    return x


def yolo_head(classes, anchors, mask):
    """A darknet YOLO layer: its raw [N, A*(5+classes), H, W] map is a model output (decoding is
    left to the caller)."""
    return _fn(_yolo_head)


# ---------------------------------------------------------------------------------------
# Building: a model records its dataflow while its blocks create their modules (with the
# names of the spec, hence of the reference's state_dict); forward runs the recorded steps.
class V:
    """A value while the model is built: its slot in the program and its shape per sample."""

    __slots__ = ("slot", "shape")

    def __init__(self, slot, shape):
        self.slot, self.shape = slot, tuple(shape)


class BlockCall:
    """A block with its arguments, placed by `Scope.step` / `Scope.named`."""

    def __init__(self, cls, args, kwargs):
        self.cls, self.args, self.kwargs = cls, args, kwargs


class Scope:
    """Where a body adds its layers: a module and its dotted path, the counter that names
    unnamed layers 0, 1, 2..., the names and values of the body (for `from:` references) and
    the body's inputs."""

    def begin(self, module, path, inputs, net):
        self.__dict__.update(_mod=module, path=path, _inputs=list(inputs), net=net, _count=0, _named=[], _order=[])
        return self

    # -- names and modules
    def join(self, name):
        return f"{self.path}.{name}" if self.path else name

    def _container(self, name):
        """The module at the dotted `name` under this scope, created as a plain container."""
        m = self._mod
        for part in name.split(".") if name else []:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        return m

    def attach(self, name, module):
        """Registers an op's module at the dotted `name` under this scope."""
        parent, _, last = name.rpartition(".")
        owner = self._container(parent)
        if last in owner._modules:
            raise ValueError(f"`{self.join(name)}` is defined twice")
        owner.add_module(last, module)
        return module

    def attach_param(self, name, tensor):
        """Registers a parameter named `name` (on the module holding it); returns that module's
        path and the parameter's attribute name."""
        parent, _, last = name.rpartition(".")
        self._container(parent).register_parameter(last, nn.Parameter(tensor))
        full = self.join(parent) if parent else self.path
        return full, last

    # -- the lowering rules of tlc
    def index(self):
        self._count += 1
        return str(self._count - 1)

    def record(self, v, name=None):
        if name is not None:
            self._named.append((name, v))
        self._order.append(v)
        return v

    def step(self, what, *ins, name=None):
        """A chain step: named `name`, else by the next index (both take an index)."""
        index = self.index()
        return self.record(self.place(what, index if name is None else name, list(ins)), name)

    def named(self, name, what, *ins):
        """A `name: layer` item."""
        self.index()
        return self.record(self.place(what, name, list(ins)), name)

    def sub(self, name, *ins):
        """A `name:` item holding a body or a chain: a child scope (inputs: `ins`, or this one's)."""
        self.index()
        child = Scope().begin(self._container(name), self.join(name), ins or self._inputs, self.net)
        child.name = name
        return child

    def close(self, child, v):
        """The end of a child scope: its value is recorded under the scope's name."""
        self.net._scopes.append((child.path, v))
        return self.record(v, child.name)

    def place(self, what, name, ins):
        if isinstance(what, BlockCall):
            return self.instantiate(what, name, ins)
        fn, shape = what.make(self, name, [v.shape for v in ins])
        return self.net._value(fn, ins, shape, self.join(name))

    def instantiate(self, call, name, ins):
        """A block instance: a fresh module of the block's class at `name`, or, when the spec
        reuses a name, more layers in the module already there."""
        path, (parent_name, _, last) = self.join(name), name.rpartition(".")
        parent = self._container(parent_name)
        if last in parent._modules:
            scope = Scope().begin(parent._modules[last], path, ins, self.net)
        else:
            block = call.cls()
            parent.add_module(last, block)
            scope = block.begin(block, path, ins, self.net)
        out = call.cls.build(scope, ins[0], *call.args, **call.kwargs)
        self.net._scopes.append((path, out))
        return out

    def join_values(self, how, *vs, dim=1):
        """The add / mul / concat a pattern makes (no index; a single value passes through)."""
        if len(vs) == 1:
            return vs[0]
        op = {"add": add(), "mul": mul(), "concat": concat(dim)}[how]
        fn, shape = op.make(self, how, [v.shape for v in vs])
        return self.net._value(fn, list(vs), shape, self.join(how))

    def ref(self, r):
        """A `from:` / `@` reference: `in`, `inK`, -k (k-th previous item), a name of this
        body, or a full node or scope name."""
        if r == "in":
            return self._inputs[0]
        if r.startswith("in") and r[2:].isdigit() and int(r[2:]) < len(self._inputs):
            return self._inputs[int(r[2:])]
        if r.lstrip("-").isdigit() and int(r) < 0:
            i = len(self._order) + int(r)
            if i >= 0:
                return self._order[i]
            if i == -1:
                return self._inputs[0]
        for n, v in reversed(self._named):
            if n == r:
                return v
        names = self.net._names
        for key in (self.join(r), r):
            if key in names:
                return names[key]
        for p, v in reversed(self.net._scopes):
            if p in (self.join(r), r):
                return v
        raise KeyError(f"unknown reference `{r}` in `{self.path}`")

    def order_first(self, names):
        """`order:`: these sub-modules come first in state_dict (the reference's registration order)."""
        self.net._orders.append((self._mod, names))


class Block(nn.Module, Scope):
    """A spec block: `build(self, x, ...)` adds the block's layers to `self` (a Scope) and
    returns its output value."""

    @classmethod
    def of(cls, *args, **kwargs):
        return BlockCall(cls, args, kwargs)


class Network(Block):
    """The whole model: builds itself with `build` and runs the recorded steps in forward."""

    input_shape = ()

    def __init__(self):
        super().__init__()
        self._steps, self._names, self._scopes, self._orders = [], {}, [], []
        x = V(0, self.input_shape)
        self._nvals, self._names["input"] = 1, x
        self.begin(self, "", [x], self)
        out = self.build(x)
        heads = [V(o, ()) for fn, _, o in self._steps if isinstance(fn, Fn) and fn.f is _yolo_head]
        self._finish(heads or [out])
        for module, names in self._orders:
            first = {n: module._modules[n] for n in names if n in module._modules}
            module._modules = {**first, **{k: v for k, v in module._modules.items() if k not in first}}

    def _value(self, fn, ins, shape, name):
        v = V(self._nvals, shape)
        self._nvals += 1
        self._steps.append((fn, [i.slot for i in ins], v.slot))
        key, k = name, 0
        while key in self._names:
            k += 1
            key = f"{name}:{k}"
        self._names[key] = v
        return v

    def _finish(self, outs):
        """Keeps the steps the outputs need and frees each value after its last reader."""
        need = {v.slot for v in outs}
        kept = []
        for fn, ins, out in reversed(self._steps):
            if out in need:
                need.update(ins)
                kept.append((fn, ins, out))
        kept.reverse()
        last = {}
        for k, (_, ins, _) in enumerate(kept):
            for i in ins:
                last[i] = k
        final = {v.slot for v in outs}
        self._run = [(fn, ins, out, [i for i in set(ins) if last[i] == k and i not in final]) for k, (fn, ins, out) in enumerate(kept)]
        self._outs = [v.slot for v in outs]
        del self._steps, self._names, self._scopes

    def forward(self, x):
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"expected input [N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        vals = [None] * self._nvals
        vals[0] = x
        for fn, ins, out, free in self._run:
            vals[out] = fn(self, *[vals[i] for i in ins])
            for i in free:
                vals[i] = None
        outs = [vals[i] for i in self._outs]
        return outs[0] if len(outs) == 1 else tuple(outs)
