"""Regenerates features.weights and features.npz: random darknet weights for features.cfg and
OpenCV's darknet importer's output of every layer on a random input.

Needs numpy and opencv-python-headless 4.x (OpenCV 5 dropped the darknet importer):
    python3 -m venv /tmp/cv4 && /tmp/cv4/bin/pip install opencv-python-headless==4.10.0.84 numpy
    /tmp/cv4/bin/python make_features.py
"""
import cv2
import numpy as np

rng = np.random.default_rng(20240611)
sections = []
for line in open("features.cfg"):
    line = line.split("#")[0].strip()
    if line.startswith("["):
        sections.append([line[1:-1], {}])
    elif "=" in line:
        k, v = line.split("=", 1)
        sections[-1][1][k.strip()] = v.strip()

# Darknet weights: int32 major=0, minor=2, revision=0, int64 seen, then per convolution
# (BN beta, gamma, mean, var | bias), weights [out, in/groups, k, k], all float32.
chunks = [np.array([0, 2, 0], "<i4").tobytes(), np.array([0], "<i8").tobytes()]
c = int(sections[0][1]["channels"])
channels = []  # output channels of each layer, for the routes
for i, (kind, o) in enumerate(sections[1:]):
    if kind == "route":
        ins = [int(v) for v in o["layers"].split(",")]
        c = sum(channels[j if j >= 0 else i + j] for j in ins) // int(o.get("groups", 1))
    elif kind == "convolutional":
        n, k, g = int(o["filters"]), int(o["size"]), int(o.get("groups", 1))
        if o.get("batch_normalize") == "1":
            for arr in (rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)):
                chunks.append(arr.astype("<f4").tobytes())
        else:
            chunks.append(rng.normal(0, 0.1, n).astype("<f4").tobytes())
        fan_in = c // g * k * k
        chunks.append(rng.normal(0, 1 / np.sqrt(fan_in), (n, c // g, k, k)).astype("<f4").tobytes())
        c = n
    channels.append(c)
open("features.weights", "wb").write(b"".join(chunks))

net = cv2.dnn.readNetFromDarknet("features.cfg", "features.weights")
x = rng.uniform(0, 1, (1, 3, 27, 21)).astype("float32")
net.setInput(x)
# OpenCV names a layer's activation after the next index (conv_0, bn_0, leaky_1): give each
# activation to the layer before it; a darknet layer's output is its last OpenCV layer. The
# [yolo] layer's output is decoded boxes: its raw input is the conv before it.
ACTS = ("leaky_", "mish_", "swish_", "logistic_", "relu_", "tanh_")
outs, layer = {}, None
for name in net.getLayerNames():
    if not name.startswith(ACTS):
        layer = int(name.rsplit("_", 1)[1])
    if not name.startswith(("yolo_", "permute_")):
        outs[f"layers.{layer}"] = name
got = net.forward(list(outs.values()))
arrays = {"input": x}
for key, y in zip(outs, got):
    arrays[key] = y.astype("float32")
    print(key, outs[key], y.shape)
np.savez("features.npz", **arrays)
