#!/usr/bin/env python3
"""Golden fixtures for idforge's ArcFace-class embedder (IResNet) and the insightface alignment.

Usage (from the repository root; see README.md beside this file):

    python3 -m venv .venv-iresnet
    .venv-iresnet/bin/pip install --only-binary=:all: -r tools/iresnet-reference/requirements.txt
    .venv-iresnet/bin/python tools/iresnet-reference/make_fixtures.py

Reads the face-api sample photos and their 68-point landmarks from
models/tests/fixtures/face-api/ (sample{1,4,6}_640.png, results.json) and writes
models/tests/fixtures/iresnet/:

  iresnet50_w4.onnx      IResNet-50 block counts [3, 4, 14, 3] at widths [4, 8, 16, 32], a
                         32-d embedding, random weights (seed 0), exported as arcface_torch's
                         torch2onnx.py does: eval mode, opset 11, input "data", initializers not
                         graph inputs, batch axis renamed "None". The exporter folds each
                         Conv→BatchNorm pair into one Conv with a bias.
  iresnet18_w4_mxnet.onnx
                         IResNet-18 [2, 2, 2, 2] at widths [4, 8, 16, 32], 16-d, seed 1,
                         exported with training=PRESERVE so every BatchNorm stays a
                         BatchNormalization node (the unfolded form), then given the
                         `_minusscalar0` (Sub 127.5) / `_mulscalar0` (Mul 0.0078125) input
                         prefix of MXNet-converted insightface models. For such graphs
                         insightface's ArcFaceONNX feeds raw pixels (input_mean 0, input_std 1).
  sampleN_640_faceK.png  the aligned 112×112 crops: insightface `norm_crop` (skimage
                         SimilarityTransform.estimate to `arcface_dst`, then
                         cv2.warpAffine(img, M, (112, 112), borderValue=0.0)), lossless.
  iresnet.json           versions, the template, per face: the 5 points, the 2×3 matrix, the
                         crop file, a 2×2 patch of the network input blob per model, and ONNX
                         Runtime's raw (not normalised) embedding per model.

The 5 points come from face-api's 68-point iBUG landmarks (0-based): the mean of points 36–41
(left eye in the image), the mean of 42–47 (right eye), point 30 (nose tip), 48 and 54 (mouth
corners) — the order insightface's detectors (SCRFD, RetinaFace) give `kps` in.

Everything is deterministic on the pinned versions; re-running rewrites identical crops and
JSON (ONNX files carry the exporter's version strings, nothing time-dependent).
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import skimage
import torch
from onnx import helper, numpy_helper
from skimage import transform as trans
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
FACE_API = ROOT / "models/tests/fixtures/face-api"
OUT = ROOT / "models/tests/fixtures/iresnet"
IMAGES = ["sample1_640.png", "sample4_640.png", "sample6_640.png"]

# insightface python-package/insightface/utils/face_align.py, float32 as there.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# IResNet as recognition/arcface_torch/backbones/iresnet.py defines it, with the four stage
# widths (64, 128, 256, 512 there) and the embedding size as parameters. Dropout is 0 as in
# torch2onnx.py; fp16 autocast and activation checkpointing do not change eval-mode maths.

def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers, widths=(64, 128, 256, 512), num_features=512, dropout=0.0):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0], stride=2)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                       nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        x = self.features(x)
        return x


def randomise(net, seed):
    """Random weights where nothing is an identity: conv weights N(0, 1/fan_in), BN scales and
    running variances spread around 1, PReLU slopes over (0.05, 0.45). Biases and running means
    are small (σ = 0.02): larger ones add up along the residual stack into an offset that
    swamps the input, and every face then gets nearly the same embedding (σ = 0.2 gave cosines
    of 0.9999 between different faces, a parity test that could not fail)."""
    g = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in ** 0.5))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.weight.copy_(u(n, 0.5, 1.5))
                m.bias.copy_(0.02 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.02 * torch.randn(n, generator=g))
                m.running_var.copy_(u(n, 0.5, 2.0))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(u(m.weight.shape, 0.05, 0.45))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.02 * torch.randn(m.out_features, generator=g))
    net.eval()
    return net


def export(net, path, training):
    """torch2onnx.py's convert_onnx: a [1, 3, 112, 112] example, input "data", opset 11,
    keep_initializers_as_inputs=False, then the batch axis renamed to "None"."""
    img = torch.zeros(1, 3, 112, 112)
    kwargs = {} if training is None else {"training": training}
    torch.onnx.export(net, img, str(path), input_names=["data"], keep_initializers_as_inputs=False,
                      verbose=False, opset_version=11, dynamo=False, **kwargs)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))


def add_mxnet_prefix(path):
    """Prepends the input normalisation that MXNet-converted insightface models carry, with
    their node names (`_minusscalar0`, `_mulscalar0`)."""
    model = onnx.load(str(path))
    g = model.graph
    inp = g.input[0].name
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == inp:
                node.input[i] = "_mulscalar0"
    g.initializer.extend([
        numpy_helper.from_array(np.array(127.5, dtype=np.float32), "_minusscalar0_scalar"),
        numpy_helper.from_array(np.array(0.0078125, dtype=np.float32), "_mulscalar0_scalar"),
    ])
    prefix = [
        helper.make_node("Sub", [inp, "_minusscalar0_scalar"], ["_minusscalar0"],
                         name="_minusscalar0"),
        helper.make_node("Mul", ["_minusscalar0", "_mulscalar0_scalar"], ["_mulscalar0"],
                         name="_mulscalar0"),
    ]
    nodes = prefix + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------------------------
# insightface utils/face_align.py (estimate_norm, norm_crop) for 112×112, mode 'arcface'.

def estimate_norm(lmk):
    assert lmk.shape == (5, 2)
    tform = trans.SimilarityTransform()
    tform.estimate(lmk, ARCFACE_DST * 1.0)
    return tform.params[0:2, :]


def norm_crop(img, lmk):
    m = estimate_norm(lmk)
    return cv2.warpAffine(img, m, (112, 112), borderValue=0.0), m


def five_points(lm68):
    p = np.asarray(lm68, dtype=np.float64)
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])


def input_norm(model):
    """arcface_onnx.py's rule: Sub and Mul nodes among the first 8 (by name) mean the graph
    normalises itself, so the input is raw pixels."""
    names = [n.name for n in model.graph.node[:8]]
    find_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    find_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    specs = [
        dict(file="iresnet50_w4.onnx", layers=[3, 4, 14, 3], widths=[4, 8, 16, 32],
             embedding=32, seed=0, training=None, mxnet_prefix=False),
        dict(file="iresnet18_w4_mxnet.onnx", layers=[2, 2, 2, 2], widths=[4, 8, 16, 32],
             embedding=16, seed=1, training=torch.onnx.TrainingMode.PRESERVE, mxnet_prefix=True),
    ]
    models = []
    for s in specs:
        net = randomise(IResNet(s["layers"], s["widths"], s["embedding"]), s["seed"])
        path = out / s["file"]
        export(net, path, s["training"])
        if s["mxnet_prefix"]:
            add_mxnet_prefix(path)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        ops = {}
        for n in model.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        mean, std = input_norm(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        models.append(dict(spec=s, path=path, sess=sess, mean=mean, std=std, net=net))
        print(f"{s['file']}: {path.stat().st_size} bytes, ops {ops}, input mean/std {mean}/{std}")

    results = json.loads((FACE_API / "results.json").read_text())
    faces = []
    for image in results["images"]:
        if image["png"] not in IMAGES:
            continue
        bgr = cv2.imread(str(FACE_API / image["png"]), cv2.IMREAD_COLOR)
        assert bgr.shape == (image["height"], image["width"], 3)
        for k, face in enumerate(image["ssd_mobilenetv1"]):
            lmk = five_points(face["landmarks_68"])
            crop, m = norm_crop(bgr, lmk)
            name = f"{Path(image['png']).stem}_face{k}.png"
            cv2.imwrite(str(out / name), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            assert np.array_equal(cv2.imread(str(out / name)), crop)
            record = dict(image=image["png"], face=k, landmarks5=lmk.tolist(),
                          matrix=m.tolist(), crop=name, blob_patch={}, embeddings={})
            for mdl in models:
                blob = cv2.dnn.blobFromImages([crop], 1.0 / mdl["std"], (112, 112),
                                              (mdl["mean"],) * 3, swapRB=True)
                emb = mdl["sess"].run(None, {"data": blob})[0][0]
                if not mdl["spec"]["mxnet_prefix"]:
                    with torch.no_grad():
                        t = mdl["net"](torch.from_numpy(blob))[0].numpy()
                    cos = float(np.dot(t, emb) / np.linalg.norm(t) / np.linalg.norm(emb))
                    assert cos > 0.99999, f"torch vs ORT cosine {cos}"
                f = mdl["spec"]["file"]
                # channels (RGB after swapRB), rows 50-51, cols 60-61
                record["blob_patch"][f] = [float(v) for v in blob[0, :, 50:52, 60:62].ravel()]
                record["embeddings"][f] = [float(v) for v in emb]
            faces.append(record)

    # The random networks must tell faces apart, or an embedding parity test says nothing.
    for mdl in models:
        f = mdl["spec"]["file"]
        e = np.array([r["embeddings"][f] for r in faces])
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        c = e @ e.T
        off = c[~np.eye(len(e), dtype=bool)]
        print(f"{f}: cosine between different faces: max {off.max():.4f}, mean {off.mean():.4f}")

    doc = dict(
        generator="tools/iresnet-reference/make_fixtures.py",
        versions=dict(torch=torch.__version__, onnx=onnx.__version__,
                      onnxruntime=ort.__version__, opencv=cv2.__version__,
                      skimage=skimage.__version__, numpy=np.__version__),
        arcface_dst=ARCFACE_DST.astype(np.float64).tolist(),
        models=[dict(file=m["spec"]["file"], sha256=sha256(m["path"]),
                     layers=m["spec"]["layers"], widths=m["spec"]["widths"],
                     embedding=m["spec"]["embedding"],
                     bn_folded=m["spec"]["training"] is None,
                     mxnet_prefix=m["spec"]["mxnet_prefix"],
                     input_mean=m["mean"], input_std=m["std"]) for m in models],
        blob_patch="network input blob[0, :, 50:52, 60:62] (RGB, rows 50-51, cols 60-61), "
                   "cv2.dnn.blobFromImages(crop, 1/std, (112, 112), mean, swapRB=True)",
        faces=faces,
    )
    (out / "iresnet.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{len(faces)} faces; {out}: {total} bytes")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
