#!/usr/bin/env python3
"""Reference-photo → adapter-input fixtures for idforge's `models::reference` (and through it
`idforge generate --ref`): insightface's alignment, ONNX Runtime's ArcFace embeddings and
transformers' CLIP image encoder, on the faces idforge found.

Run with tools/reference-inputs/run (see README.md beside this file). Reads:

  models/tests/fixtures/reference/points.json
      written by `cargo run -p idforge-models --example reference_points`: for each photo
      (face-api's sample photographs at 640 px, models/tests/fixtures/face-api/*.png) the
      largest face's box and the five points idforge derived from face-api's 68 landmarks.
  models/tests/fixtures/iresnet/*.onnx
      the tiny random IResNets of tools/iresnet-reference.

Writes models/tests/fixtures/reference/:

  image_encoder/       a tiny random CLIPVisionModelWithProjection saved as diffusers keeps its
                       `image_encoder/` folder (config.json + model.safetensors, float32):
                       28 px input, patch 14 (2×2 patches + class token = 5 tokens), width 16,
                       2 heads, 2 layers, MLP 32, gelu, projection 16 -- the widths of the tiny
                       IP-Adapter fixtures (diffusion/tests/fixtures/ip-adapter/).
  reference.json       versions; per photo: the points used, sha256 of the 112 and 224 px
                       insightface `norm_crop`s (RGB bytes), and per IResNet the raw ArcFace
                       embedding (insightface `face.embedding`) and the L2-normalised one
                       (`face.normed_embedding`).
  reference.safetensors
                       CLIPImageProcessor's pixel_values and the encoder's `image_embeds` and
                       `hidden_states[-2]` for: `photo.<i>` the whole photo (PIL RGB, as
                       diffusers' `ip_adapter_image`), `crop_bgr.<i>` the 224 px crop as
                       IP-Adapter-FaceID-Plus's demo hands it over (OpenCV's BGR array),
                       `crop_rgb.<i>` the same in true colours; `uncond.hidden_states` the
                       encoder on `torch.zeros_like(pixel_values)` (diffusers' `encode_image`).

The alignment is insightface's `utils/face_align.py` (`estimate_norm` for image sizes that are
multiples of 112: `arcface_dst * (size / 112)`, skimage `SimilarityTransform.estimate`; then
`cv2.warpAffine(img, M, (size, size), borderValue=0.0)`) on the photo as OpenCV reads it (BGR).
The embedding is insightface's `ArcFaceONNX.get_feat`: `cv2.dnn.blobFromImages(crops, 1/std,
(112, 112), (mean,)*3, swapRB=True)` with insightface's mean/std rule for the graph, then ONNX
Runtime; `normed_embedding = embedding / np.linalg.norm(embedding)`.
"""
import argparse
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import PIL
import skimage
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from skimage import transform as trans
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models/tests/fixtures"
OUT = FIXTURES / "reference"
MODELS = ["iresnet18_w4_mxnet.onnx", "iresnet50_w4.onnx"]

# insightface python-package/insightface/utils/face_align.py, float32 as there.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32)

ENCODER = dict(image_size=28, patch_size=14, hidden_size=16, num_attention_heads=2,
               num_hidden_layers=2, intermediate_size=32, projection_dim=16, hidden_act="gelu")


def estimate_norm(lmk, image_size):
    assert lmk.shape == (5, 2) and image_size % 112 == 0
    ratio = float(image_size) / 112.0
    dst = ARCFACE_DST * ratio
    tform = trans.SimilarityTransform()
    tform.estimate(lmk, dst)
    return tform.params[0:2, :]


def norm_crop(img, lmk, image_size):
    m = estimate_norm(lmk, image_size)
    return cv2.warpAffine(img, m, (image_size, image_size), borderValue=0.0)


def input_norm(model):
    """insightface arcface_onnx.py: Sub and Mul among the first 8 nodes mean the graph
    normalises itself (raw pixels in)."""
    names = [n.name for n in model.graph.node[:8]]
    find_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    find_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)


def randomize(model, seed):
    """Every parameter random (as tools/clip-reference): matrices N(0, 1/fan_in), LayerNorm
    scales 1 + N(0, 0.1²), biases N(0, 0.05²), class and position embeddings N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and "class_embedding" not in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "embedding" in name and "patch" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    points = json.loads((OUT / "points.json").read_text())

    torch.manual_seed(0)
    config = CLIPVisionConfig(**ENCODER)
    encoder = CLIPVisionModelWithProjection(config).eval()
    randomize(encoder, 0)
    encoder.save_pretrained(out / "image_encoder", safe_serialization=True)
    # As IP-Adapter's code builds it (`CLIPImageProcessor()`), at the tiny encoder's size.
    processor = CLIPImageProcessor(size={"shortest_edge": ENCODER["image_size"]},
                                   crop_size={"height": ENCODER["image_size"],
                                              "width": ENCODER["image_size"]})

    sessions = {}
    for name in MODELS:
        path = FIXTURES / "iresnet" / name
        sessions[name] = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
                          input_norm(onnx.load(str(path))))

    tensors = {}

    def clip(key, image):
        pixels = processor(images=image, return_tensors="pt").pixel_values
        with torch.no_grad():
            o = encoder(pixels, output_hidden_states=True)
        tensors[f"{key}.pixel_values"] = pixels[0].contiguous()
        tensors[f"{key}.image_embeds"] = o.image_embeds[0].contiguous()
        tensors[f"{key}.hidden_states"] = o.hidden_states[-2][0].contiguous()
        return pixels

    photos = []
    for i, p in enumerate(points["photos"]):
        path = FIXTURES / "face-api" / p["image"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        lmk = np.asarray(p["points"], dtype=np.float64)
        crop112 = norm_crop(bgr, lmk, 112)
        crop224 = norm_crop(bgr, lmk, 224)
        embeddings = {}
        for name, (sess, (mean, std)) in sessions.items():
            blob = cv2.dnn.blobFromImages([crop112], 1.0 / std, (112, 112), (mean, mean, mean),
                                          swapRB=True)
            emb = sess.run(None, {sess.get_inputs()[0].name: blob})[0][0]
            embeddings[name] = {
                "embedding": [float(v) for v in emb],
                "normed_embedding": [float(v) for v in emb / np.linalg.norm(emb)],
            }
        clip(f"photo.{i}", Image.open(path).convert("RGB"))
        clip(f"crop_bgr.{i}", crop224)
        pixels = clip(f"crop_rgb.{i}", np.ascontiguousarray(crop224[:, :, ::-1]))
        photos.append({
            "image": p["image"],
            "points": p["points"],
            "crop112_rgb_sha256": sha256(np.ascontiguousarray(crop112[:, :, ::-1]).tobytes()),
            "crop224_rgb_sha256": sha256(np.ascontiguousarray(crop224[:, :, ::-1]).tobytes()),
            "arcface": embeddings,
        })
    with torch.no_grad():
        tensors["uncond.hidden_states"] = encoder(
            torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2][0].contiguous()
    save_file(tensors, str(out / "reference.safetensors"))
    doc = {
        "generator": "tools/reference-inputs/make_fixtures.py",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "opencv": cv2.__version__, "skimage": skimage.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__,
        },
        "encoder": ENCODER,
        "photos": photos,
    }
    (out / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}: {len(photos)} photos, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
