"""Side-by-side CPU latency and peak memory: `tlc bench --json`, ONNX Runtime (CPU provider,
ORT_ENABLE_ALL) and PyTorch eager on the torchvision models (random weights, zero input,
float32), same batch sizes and thread count.

Needs torch, torchvision, onnx and onnxruntime in a throwaway venv (never CI), e.g.
    /tmp/venv/bin/pip install torch torchvision onnx onnxruntime
    cargo build --release
    /tmp/venv/bin/python benches/compare_onnxruntime.py                 # 8 models, batch 1 and 8
    /tmp/venv/bin/python benches/compare_onnxruntime.py --models resnet50 --batches 1 --reps 5
    /tmp/venv/bin/python benches/compare_onnxruntime.py --profile efficientnet_b0 --batches 1
        # ONNX Runtime's per-op-type time (enable_profiling); tlc's side: TLC_PROFILE=1 tlc bench

Every model is exported once per batch size with `torch.onnx.export` (opset 17, static
shapes) into `--cache`. Each measurement runs in its own process (so its peak RSS is its
own); the three engines alternate within every repetition so that noise on a shared machine
hits them alike. A repetition is the median of as many timed forwards as fill about
`--rep-seconds` (at least `--iters`; the same count for every engine) after 2 warm-ups;
the table shows the median over repetitions. Ratios are tlc / other (below 1: tlc faster).
"""
import argparse, json, os, resource, statistics, subprocess, sys, time

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "inception_v3", "convnext_tiny", "vit_b_16", "vgg16"]
SIZE = {"inception_v3": 299}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb():
    """This process's peak resident set (VmHWM): unlike ru_maxrss it is not inherited across
    fork + exec from the parent that exported the models."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def torch_model(name):
    import torchvision
    kw = {"weights": None}
    if name == "inception_v3":
        kw.update(aux_logits=False, init_weights=False)
    return getattr(torchvision.models, name)(**kw).eval()


def onnx_path(cache, name, batch):
    """Exports `name` at `batch` to ONNX (once) and returns the file."""
    path = os.path.join(cache, f"{name}_b{batch}.onnx")
    if not os.path.exists(path):
        import torch
        os.makedirs(cache, exist_ok=True)
        s = SIZE.get(name, 224)
        x = torch.zeros(batch, 3, s, s)
        tmp = path + ".tmp"
        # Gradients stay enabled: under no_grad, nn.MultiheadAttention takes a fused fast path
        # that the exporter cannot write.
        torch.onnx.export(torch_model(name), (x,), tmp, opset_version=17, input_names=["x"], output_names=["y"], dynamo=False)
        os.replace(tmp, path)
    return path


def timed(f, iters):
    """(median wall ms, mean process CPU ms) per call, after 2 warm-ups."""
    for _ in range(2):
        f()
    ts = []
    c0 = time.process_time()
    for _ in range(iters):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts), 1000 * (time.process_time() - c0) / iters


def worker_ort(a):
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if a.profile_out:
        so.enable_profiling = True
        so.profile_file_prefix = a.profile_out
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    s = SIZE.get(a.model, 224)
    x = np.zeros((a.batch, 3, s, s), dtype=np.float32)
    ms, cpu = timed(lambda: sess.run(None, {"x": x}), a.iters)
    out = {"ms": ms, "cpu": cpu, "rss": peak_rss_mb()}
    if a.profile_out:
        out["profile"] = sess.end_profiling()
    return out


def worker_torch(a):
    import torch
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    m = torch_model(a.model)
    s = SIZE.get(a.model, 224)
    x = torch.zeros(a.batch, 3, s, s)
    with torch.inference_mode():
        ms, cpu = timed(lambda: m(x), a.iters)
    return {"ms": ms, "cpu": cpu, "rss": peak_rss_mb()}


def run_worker(engine, a, model, batch, iters, onnx=None, profile_out=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--models", model, "--batches", str(batch), "--threads", str(a.threads), "--iters", str(iters)]
    if onnx:
        cmd += ["--onnx", onnx]
    if profile_out:
        cmd += ["--profile-out", profile_out]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed_passes(a, model, batch):
    """Timed forwards per repetition: enough to fill `--rep-seconds` at tlc's speed (one short
    tlc run first), at least `--iters` (scaled down for larger batches), the same for every
    engine. A fixed count made MobileNetV2's repetitions 40 ms long: one burst of another
    tenant's load decided a row."""
    least = max(3, a.iters // max(1, batch // 2))
    if a.rep_seconds <= 0:
        return least
    probe = run_tlc(a, model, batch, 3)["ms"]
    return max(least, min(a.max_iters, round(a.rep_seconds * 1000 / max(probe, 1e-3))))


def run_tlc(a, model, batch, iters):
    cmd = [a.tlc, "bench", os.path.join(ROOT, "specs", f"{model}.yaml"), "--batch", str(batch), "--threads", str(a.threads), "--iters", str(iters), "--json"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return {"ms": r["median_ms"], "cpu": r["cpu_ms"], "rss": r["peak_rss_mb"]}


def ort_profile(path):
    """Per op type: (total ms, count), and per node: (fastest ms, op, output shape), from an
    ONNX Runtime profile."""
    with open(path) as f:
        events = json.load(f)
    agg, nodes = {}, {}
    runs = sum(1 for e in events if e.get("name") == "model_run")
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        t, n = agg.get(op, (0.0, 0))
        ms = e["dur"] / 1000.0
        agg[op] = (t + ms, n + 1)
        name = e["name"][: -len("_kernel_time")]
        shape = [d for o in args.get("output_type_shape", []) for d in o.values()]
        best = nodes.get(name)
        nodes[name] = (min(ms, best[0]) if best else ms, op, shape)
    return runs, agg, nodes


def profile(a):
    for model in a.models:
        for b in a.batches:
            onnx = onnx_path(a.cache, model, b)
            prefix = os.path.join(a.cache, f"prof_{model}_b{b}")
            r = run_worker("ort", a, model, b, a.iters, onnx, prefix)
            runs, agg, nodes = ort_profile(r["profile"])
            runs = max(runs, 1)
            total = sum(v[0] for v in nodes.values())
            print(f"ONNX Runtime {model} batch {b}: {r['ms']:.2f} ms median, {r['cpu']:.2f} ms CPU per run; per op type (ms per run, nodes per run):")
            for op, (t, n) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
                print(f"{t / runs:9.2f} ms {n // runs:5d}x  {op}")
            print(f"each node's fastest run, summed: {total:.2f} ms; slowest nodes:")
            for name, (t, op, shape) in sorted(nodes.items(), key=lambda kv: -kv[1][0])[: a.top]:
                print(f"{t:9.3f} ms  {name} ({op}, output {shape})")
            os.remove(r["profile"])


def pool(files):
    """The README's table from several runs: every repetition of every run pooled per row."""
    rows = {}
    for path in files:
        with open(path) as f:
            for r in json.load(f):
                d = rows.setdefault((r["model"], r["batch"]), {"ms": {}, "rss": {}})
                for eng, reps in r["all"].items():
                    d["ms"].setdefault(eng, []).extend(x["ms"] for x in reps)
                    if reps:
                        d["rss"][eng] = max(x["rss"] for x in reps)
    print("| model | batch | tlc ms | ONNX Runtime ms | PyTorch ms | tlc / ORT | tlc / ORT, fastest reps | tlc / PyTorch | peak RSS MiB tlc / ORT / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, b), d in rows.items():
        med = {k: statistics.median(v) if v else float("nan") for k, v in d["ms"].items()}
        low = {k: min(v) if v else float("nan") for k, v in d["ms"].items()}
        rss = d["rss"]
        print(f"| {name} | {b} | {med['tlc']:.1f} | {med['ort']:.1f} | {med['torch']:.1f} | {med['tlc'] / med['ort']:.2f} | {low['tlc'] / low['ort']:.2f} | "
              f"{med['tlc'] / med['torch']:.2f} | {rss['tlc']:.0f} / {rss['ort']:.0f} / {rss['torch']:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tlc", default=os.path.join(ROOT, "target", "release", "tlc"))
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="fewest timed forwards per repetition at batch 1 (scaled down for larger batches)")
    ap.add_argument("--rep-seconds", type=float, default=1.0, help="timed forwards per repetition: as many as fill this many seconds (0: exactly --iters)")
    ap.add_argument("--max-iters", type=int, default=300, help="most timed forwards per repetition")
    ap.add_argument("--cache", default="/tmp/tlc-onnx", help="where the exported .onnx files go")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--cpu", action="store_true", help="compare CPU time per forward (all threads) instead of wall time: steadier on a loaded machine, meaningful with --threads 1")
    ap.add_argument("--profile", action="store_true", help="print ONNX Runtime's per-op-type profile instead")
    ap.add_argument("--top", type=int, default=12, help="slowest nodes listed by --profile")
    ap.add_argument("--pool", nargs="+", metavar="JSON", help="print the markdown table of several runs' --json files pooled (median and fastest repetition per engine; peak RSS of the last run) instead of measuring")
    ap.add_argument("--worker", choices=["ort", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.model, a.batch = a.models[0], a.batches[0]
        print(json.dumps(worker_ort(a) if a.worker == "ort" else worker_torch(a)))
        return
    if a.profile:
        profile(a)
        return
    if a.pool:
        pool(a.pool)
        return
    rows = []
    print(f"{a.threads} threads, {a.reps} repetitions (median); load average before: {os.getloadavg()}", file=sys.stderr)
    if a.cpu:
        print("CPU ms per forward (all threads), not wall time", file=sys.stderr)
    print(f"{'model':16s} {'batch':>5s} {'tlc ms':>8s} {'ORT ms':>8s} {'torch ms':>9s} {'tlc/ORT':>8s} {'tlc/torch':>9s}  peak RSS MiB tlc/ORT/torch")
    for name in a.models:
        for b in a.batches:
            iters = timed_passes(a, name, b)
            onnx = onnx_path(a.cache, name, b)
            res = {"tlc": [], "ort": [], "torch": []}
            loads = []
            for _ in range(a.reps):
                loads.append(os.getloadavg()[0])
                res["tlc"].append(run_tlc(a, name, b, iters))
                res["ort"].append(run_worker("ort", a, name, b, iters, onnx))
                if not a.no_torch:
                    res["torch"].append(run_worker("torch", a, name, b, iters))
            key = "cpu" if a.cpu else "ms"
            med = {k: statistics.median(r[key] for r in v) if v else float("nan") for k, v in res.items()}
            rss = {k: max(r["rss"] for r in v) if v else float("nan") for k, v in res.items()}
            row = {"model": name, "batch": b, "ms": med, "rss_mb": rss, "all": res, "load1": loads}
            row["tlc_ort"] = med["tlc"] / med["ort"]
            row["tlc_torch"] = med["tlc"] / med["torch"]
            rows.append(row)
            print(f"{name:16s} {b:5d} {med['tlc']:8.1f} {med['ort']:8.1f} {med['torch']:9.1f} {row['tlc_ort']:8.2f} {row['tlc_torch']:9.2f}  {rss['tlc']:.0f}/{rss['ort']:.0f}/{rss['torch']:.0f}", flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
