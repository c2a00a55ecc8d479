"""Runs the same models in PyTorch eager (batch 1, 2 threads) for comparison with
`cargo bench --bench forward`. Needs torch and torchvision in a throwaway venv; never CI."""
import time, torch, torchvision

torch.set_num_threads(2)
for name in ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny", "vit_b_16"]:
    m = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for _ in range(3):
            m(x)
        ts = []
        for _ in range(10):
            t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{name:16s} {1000 * ts[len(ts) // 2]:8.1f} ms")
