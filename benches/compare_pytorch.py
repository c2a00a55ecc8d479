"""Side-by-side CPU latency: `tlc bench --json` against PyTorch eager (torchvision models,
random weights, zero input, float32) at the same batch sizes and thread count.

Needs torch and torchvision in a throwaway venv (never CI), e.g.
    python3 -m venv /tmp/ptvenv
    /tmp/ptvenv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
    cargo build --release
    /tmp/ptvenv/bin/python benches/compare_pytorch.py            # all models, batch 1 and 8
    /tmp/ptvenv/bin/python benches/compare_pytorch.py --models resnet50 --batches 1 --reps 5

Each (model, batch) is measured `--reps` times, alternating tlc and PyTorch so that noise on a
shared machine hits both sides alike; every repetition is the median of `--iters` timed
forwards after warm-up, and the table shows the median over repetitions. ratio = tlc / PyTorch
(below 1: tlc is faster).
"""
import argparse, json, os, statistics, subprocess, sys, time

MODELS = ["resnet50", "vgg16", "densenet121", "mobilenet_v2", "efficientnet_b0", "inception_v3", "convnext_tiny", "vit_b_16"]
SIZE = {"inception_v3": 299}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tlc_ms(tlc, model, batch, threads, iters):
    cmd = [tlc, "bench", os.path.join(ROOT, "specs", f"{model}.yaml"), "--batch", str(batch), "--threads", str(threads), "--iters", str(iters), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def torch_model(name):
    import torchvision
    kw = {"weights": None}
    if name == "inception_v3":
        kw.update(aux_logits=False, init_weights=False)
    return getattr(torchvision.models, name)(**kw).eval()


def torch_ms(torch, m, x, iters):
    with torch.inference_mode():
        for _ in range(2):
            m(x)
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            m(x)
            ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tlc", default=os.path.join(ROOT, "target", "release", "tlc"))
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="timed forwards per repetition at batch 1 (scaled down for larger batches)")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    rows = []
    print(f"torch {torch.__version__}, {a.threads} threads, {a.reps} repetitions (median)", file=sys.stderr)
    print(f"{'model':16s} {'batch':>5s} {'tlc ms':>10s} {'PyTorch ms':>11s} {'ratio':>6s}")
    for name in a.models:
        m = torch_model(name)
        s = SIZE.get(name, 224)
        for b in a.batches:
            iters = max(3, a.iters // max(1, b // 2))
            x = torch.zeros(b, 3, s, s)
            t_tlc, t_pt = [], []
            for _ in range(a.reps):
                t_tlc.append(tlc_ms(a.tlc, name, b, a.threads, iters))
                t_pt.append(torch_ms(torch, m, x, iters))
            r = {"model": name, "batch": b, "tlc_ms": statistics.median(t_tlc), "torch_ms": statistics.median(t_pt), "tlc_all": t_tlc, "torch_all": t_pt}
            r["ratio"] = r["tlc_ms"] / r["torch_ms"]
            rows.append(r)
            print(f"{name:16s} {b:5d} {r['tlc_ms']:10.1f} {r['torch_ms']:11.1f} {r['ratio']:6.2f}", flush=True)
        del m
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
