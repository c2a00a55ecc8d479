#!/usr/bin/env python3
"""Writes tests/data/yolov8n-formula.pt: an Ultralytics release-style checkpoint of YOLOv8n
holding the parity fixture's formula weights, for the runtime's `.pt` reader tests; also
tests/data/tiny-module{,-p4,-legacy}.pt and tiny-ema-ckpt.pt, a small pickled nn.Module tree
(see `tiny_module`).

The checkpoint is made by Ultralytics' own code path: a training checkpoint dict as
`BaseTrainer.save_model` builds it (`model: None`, `ema`: an fp16 deep copy of the model,
`train_args`, metrics, ...), saved with `torch.save`, then finalised by
`ultralytics.utils.torch_utils.strip_optimizer`, which is what turns `best.pt` into a release
file (ema moved to `model`, fp16, optimizer and ema set to None, metadata added).

Needs `ultralytics` (with torch and numpy); downloads nothing.
Usage: python scripts/make_ultralytics_pt.py [FIXTURE_DIR] [OUT]
  FIXTURE_DIR defaults to ../shared/parity/yolov8n (weights.safetensors, manifest.json)
  OUT defaults to tests/data/yolov8n-formula.pt
"""
import json
import os
import sys
import tempfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from ultralytics import __version__
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import strip_optimizer

ROOT = Path(__file__).resolve().parent.parent


def load_file(path: str) -> dict:
    """Reads a float32 safetensors file (the fixture's only dtype) without the safetensors package."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def formula_model(fixture: Path) -> DetectionModel:
    """DetectionModel('yolov8n.yaml') with the fixture's formula weights (strict key check)."""
    model = DetectionModel("yolov8n.yaml", verbose=False)
    sd = load_file(str(fixture / "weights.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    model.args = get_cfg(overrides={"model": "yolov8n.yaml", "data": "coco.yaml"})  # as the trainer sets it
    return model


def training_ckpt(model: DetectionModel) -> dict:
    """The dict `BaseTrainer.save_model` saves as last.pt / best.pt (values of a finished run)."""
    ema = deepcopy(model).half().to(memory_format=torch.contiguous_format)
    return {
        "epoch": 0,
        "best_fitness": 0.0,
        "stopper": {"best_fitness": 0.0, "best_epoch": 0},
        "model": None,
        "ema": ema,
        "updates": 0,
        "optimizer": None,
        "scaler": None,
        "train_args": vars(model.args),
        "train_metrics": {"fitness": 0.0},
        "train_results": {},
        "date": "2025-01-01T00:00:00+00:00",
        "version": __version__,
        "license": "AGPL-3.0 License",
        "docs": "ultralytics docs",
    }


class Tiny(torch.nn.Module):
    """Module-tree corner cases: a shared child (listed under both names by state_dict), a
    None child, a non-persistent buffer, a non-contiguous buffer, a reference to the parent
    (a cycle in the pickle) and int64 BatchNorm bookkeeping."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.bn = torch.nn.BatchNorm2d(3)
        shared = torch.nn.Linear(3, 2)
        self.a = shared
        self.b = shared
        self.none = None
        self.register_module("gone", None)
        self.seq = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 2, bias=False))
        self.seq[0].owner = [self]  # plain attribute: not in state_dict, but a cycle in the pickle
        self.register_buffer("np_buf", torch.ones(2), persistent=False)
        self.register_buffer("p_buf", torch.zeros(2, 3).t())  # stored transposed


TINY_KEYS = [
    "p_buf", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
    "bn.num_batches_tracked", "a.weight", "a.bias", "b.weight", "b.bias", "seq.1.weight",
]


def tiny_module(out_dir: Path) -> None:
    """Every float tensor of Tiny's state_dict holds arange(n) / 4 + n (row-major, n = numel);
    num_batches_tracked is 7. Saved as torch.save(model) in the zip format (pickle protocol 2
    and 4) and in the legacy format, and as the `ema` of a checkpoint whose `model` is zeros."""
    model = Tiny()
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) / 4 + t.numel())
            else:
                t.fill_(7)
    assert list(model.state_dict()) == TINY_KEYS, list(model.state_dict())
    torch.save(model, out_dir / "tiny-module.pt")
    torch.save(model, out_dir / "tiny-module-p4.pt", pickle_protocol=4)
    torch.save(model, out_dir / "tiny-module-legacy.pt", _use_new_zipfile_serialization=False)
    # A training checkpoint holding both modules: loaders must take `ema` (as Ultralytics does).
    other = Tiny()
    with torch.no_grad():
        for t in other.state_dict().values():
            t.zero_()
    torch.save({"epoch": 3, "model": other, "ema": model, "optimizer": None}, out_dir / "tiny-ema-ckpt.pt")


def main() -> None:
    fixture = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/parity/yolov8n"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "tests/data/yolov8n-formula.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    tiny_module(out.parent)
    model = formula_model(fixture)
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(tmp) / "best.pt"
        torch.save(training_ckpt(model), best)
        ckpt = strip_optimizer(best, s=str(out))
    assert ckpt and ckpt["ema"] is None and isinstance(ckpt["model"], DetectionModel)
    # The file must round-trip to the fixture after fp16 rounding.
    back = torch.load(out, map_location="cpu", weights_only=False)["model"].state_dict()
    ref = load_file(str(fixture / "weights.safetensors"))
    for k, v in ref.items():
        assert back[k].dtype == torch.float16 and torch.equal(back[k].float(), v.half().float()), k
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB, {len(back)} state_dict entries)")


if __name__ == "__main__":
    main()
