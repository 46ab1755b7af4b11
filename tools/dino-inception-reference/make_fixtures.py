#!/usr/bin/env python3
"""Golden fixtures for idforge's DINO / DINOv2 embedders and the FID Inception.

Usage (from the repository root; see README.md beside this file):

    python3 -m venv .venv-dino
    .venv-dino/bin/pip install --only-binary=:all: -r tools/dino-inception-reference/requirements.txt
    .venv-dino/bin/python tools/dino-inception-reference/make_fixtures.py

Reads models/tests/fixtures/face-api/sample{1,4}_640.png and writes

models/tests/fixtures/dino/
  small_61x47.png         sample4_640.png downscaled (Pillow LANCZOS) to 61x47, the small input
  vit/                    a `ViTModel` (hidden 32, 2 layers, 4 heads, patch 8, image 32, random
                          weights, seed 0) saved by `save_pretrained` (config.json,
                          model.safetensors), also as pytorch_model.bin (torch.save, zip), and a `ViTImageProcessor` (32x32 bilinear, ImageNet
                          mean/std; preprocessor_config.json), the layout of facebook/dino-vits16
  dinov2/                 the same for `Dinov2Model` (layer scale; seed 1) and a
                          `BitImageProcessor` (shortest edge 36 bicubic, centre crop 32), the
                          layout of facebook/dinov2-small
  dino.json               versions; per model and image: the processor's pixel values (shape,
                          sums, a strided sample) and the CLS embedding (`last_hidden_state[:,
                          0]`); per model the CLS embedding of a synthetic 48x40 input (position
                          embeddings interpolated); the full-size presets' processors on
                          sample1_640.png
  keys_vit_s16.json       parameter names and shapes of ViT-S/16 (dino-vits16) and DINOv2
  keys_dinov2_s14.json    ViT-S/14 (dinov2-small) at full size, no weights

models/tests/fixtures/inception/
  small_61x47.png         (a copy of the small input, so each folder stands alone)
  fid_inception_w16.pth   pytorch-fid's FID InceptionV3 built by pytorch-fid's own code with every
                          BasicConv2d's channel counts divided by 16 and the fc 128 -> 1008,
                          random weights (seed 2), BatchNorm statistics calibrated on the inputs;
                          saved with torch.save in the legacy (non-zip) format, as
                          pt_inception-2015-12-05-6726825d.pth is
  inception.json          versions; per image and mode (clean-fid `clean`: PIL 'F' bicubic to 299
                          then (x - 128) / 128; `legacy_pytorch`: torch bilinear on [0, 1] then
                          2x - 1): the resized image (shape, sums, strided sample), pool3 and the
                          logits
  keys_fid_inception.json parameter names and shapes of the full-size FID InceptionV3
"""

import argparse
import hashlib
import importlib.metadata
import json
import math
import shutil
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import torch.nn.functional as F
import torchvision
import transformers
from PIL import Image
from torch import nn
from transformers import (BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig,
                          ViTImageProcessor, ViTModel)
from transformers.image_utils import PILImageResampling

import cleanfid
import cleanfid.resize
import pytorch_fid
import pytorch_fid.inception as pfi
import torchvision.models.inception as tvi

ROOT = Path(__file__).resolve().parents[2]
FACE_API = ROOT / "models/tests/fixtures/face-api"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The narrow Inception: every channel count of the FID graph divided by this.
WIDTH_DIVISOR = 16
SAMPLE_COUNT = 997


def summary(arr):
    """Shape, float64 sums and a strided sample of a float32 array (flat, C order)."""
    flat = np.asarray(arr, dtype=np.float32).reshape(-1)
    stride = max(1, math.ceil(flat.size / SAMPLE_COUNT))
    return dict(
        shape=list(np.asarray(arr).shape),
        sum=float(flat.astype(np.float64).sum()),
        sum_sq=float((flat.astype(np.float64) ** 2).sum()),
        stride=stride,
        sample=[float(v) for v in flat[::stride]],
    )


def floats(t):
    return [float(v) for v in t.detach().reshape(-1).numpy()]


def synthetic(h, w):
    """A deterministic input both sides can compute: sin(0.37c + 0.11y + 0.07x + 0.013yx)."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    v = np.sin(0.37 * c + 0.11 * y + 0.07 * x + 0.013 * y * x)
    return torch.from_numpy(v.astype(np.float32))[None]


def key_list(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def randomise_transformer(model, gen):
    """Every parameter random and of a size that keeps activations O(1): no identity LayerNorm,
    no near-zero layer scale, attention scores of order one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.9 + 0.1)
            elif "layernorm" in name or ".norm" in name:
                if name.endswith("weight"):
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif p.dim() >= 2 and "embeddings." in name and "patch" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)  # cls, position, mask
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def cls_embedding(model, pixel_values, interpolate=False):
    with torch.no_grad():
        if isinstance(model, ViTModel):
            out = model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        else:
            out = model(pixel_values=pixel_values)
    return out.last_hidden_state[0, 0]


def make_dino(out, images):
    out.mkdir(parents=True, exist_ok=True)
    doc = {"models": []}
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                 image_size=32)
    specs = [
        ("vit", 0, ViTModel(ViTConfig(intermediate_size=64, qkv_bias=True, **small),
                            add_pooling_layer=False),
         ViTImageProcessor(do_resize=True, size={"height": 32, "width": 32},
                           resample=PILImageResampling.BILINEAR, do_rescale=True,
                           do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
        ("dinov2", 1, Dinov2Model(Dinov2Config(mlp_ratio=2, layerscale_value=1.0, **small)),
         BitImageProcessor(do_resize=True, size={"shortest_edge": 36},
                           resample=PILImageResampling.BICUBIC, do_center_crop=True,
                           crop_size={"height": 32, "width": 32}, do_rescale=True,
                           do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                           do_convert_rgb=True)),
    ]
    for folder, seed, model, processor in specs:
        gen = torch.Generator().manual_seed(seed)
        randomise_transformer(model, gen)
        model.eval()
        d = out / folder
        if d.exists():
            shutil.rmtree(d)
        model.save_pretrained(d, safe_serialization=True)
        if folder == "vit":
            # The Hub's older snapshots (dino-vits16 among them) ship pytorch_model.bin: the same
            # weights in torch's zip format, the other path of the loader.
            torch.save(model.state_dict(), d / "pytorch_model.bin")
        processor.save_pretrained(d)
        entry = {"folder": folder, "class": type(model).__name__, "images": []}
        for name, img in images:
            pv = processor(images=img, return_tensors="pt")["pixel_values"]
            emb = cls_embedding(model, pv)
            entry["images"].append(dict(image=name, pixel_values=summary(pv[0].numpy()),
                                        cls=floats(emb)))
        # Another input size: 6x5 patches from the 4x4 grid of position embeddings.
        x = synthetic(48, 40)
        entry["synthetic_48x40"] = floats(cls_embedding(model, x, interpolate=True))
        doc["models"].append(entry)
    # The full-size presets' processors (as facebook/dino-vits16 and facebook/dinov2-small ship
    # them) on a 640-pixel photo.
    presets = {
        "dino_vits16": ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224},
                                         resample=PILImageResampling.BILINEAR,
                                         image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        "dinov2": BitImageProcessor(size={"shortest_edge": 256},
                                    resample=PILImageResampling.BICUBIC, do_center_crop=True,
                                    crop_size={"height": 224, "width": 224},
                                    image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
    }
    doc["presets"] = {}
    for key, proc in presets.items():
        pv = proc(images=images[0][1], return_tensors="pt")["pixel_values"]
        doc["presets"][key] = dict(image=images[0][0], processor=proc.to_dict(),
                                   pixel_values=summary(pv[0].numpy()))
    return doc


def full_size_keys(out):
    # facebook/dino-vits16: ViTConfig defaults with the ViT-S sizes (the conversion script's
    # values), saved without the pooler.
    vit = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                             intermediate_size=1536, patch_size=16, image_size=224,
                             qkv_bias=True), add_pooling_layer=False)
    (out / "keys_vit_s16.json").write_text(json.dumps(key_list(vit), indent=0) + "\n")
    # facebook/dinov2-small.
    v2 = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                  patch_size=14, image_size=518, mlp_ratio=4,
                                  layerscale_value=1.0))
    (out / "keys_dinov2_s14.json").write_text(json.dumps(key_list(v2), indent=0) + "\n")


# ---------------------------------------------------------------------------------------------
# pytorch-fid's FID Inception, built by pytorch-fid's own `fid_inception_v3` and `InceptionV3`
# (so FIDInceptionA/C/E_1/E_2 are the real classes, with their count_include_pad=False average
# pools and E_2's max pool). Two patches: the weight download is skipped (random weights
# instead), and, for the committed fixture, torchvision's BasicConv2d divides its channel counts
# (3 input channels excepted) — every block builds its convolutions through that name, so the
# graph is the same with narrower layers.

def build_fid_inception(width_divisor):
    original = tvi.BasicConv2d

    class NarrowBasicConv2d(original):
        def __init__(self, in_channels, out_channels, **kwargs):
            if in_channels != 3:
                in_channels //= width_divisor
            super().__init__(in_channels, out_channels // width_divisor, **kwargs)

    captured = {}
    real_fid = pfi.fid_inception_v3

    def capturing():
        m = real_fid()
        captured["inception"] = m
        return m

    real_load = tvi.Inception3.load_state_dict
    real_url = pfi.load_state_dict_from_url
    tvi.BasicConv2d = NarrowBasicConv2d
    pfi.fid_inception_v3 = capturing
    pfi.load_state_dict_from_url = lambda *a, **k: None
    tvi.Inception3.load_state_dict = lambda self, *a, **k: None
    try:
        wrapper = pfi.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
    finally:
        tvi.BasicConv2d = original
        pfi.fid_inception_v3 = real_fid
        pfi.load_state_dict_from_url = real_url
        tvi.Inception3.load_state_dict = real_load
    inception = captured["inception"]
    inception.fc = nn.Linear(2048 // width_divisor, 1008)
    return wrapper, inception


def randomise_inception(inception, calibration, gen):
    with torch.no_grad():
        for name, p in inception.named_parameters():
            if name.endswith("conv.weight") or name == "fc.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / p[0].numel()))
            elif name.endswith("bn.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.6)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    # BatchNorm statistics from the data (cumulative average over one pass), then eval mode: the
    # activations stay O(1) through the 94 convolutions instead of exploding or dying.
    for m in inception.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    inception.train()
    with torch.no_grad():
        for x in calibration:
            inception(x)  # noqa: the logits are discarded
    inception.eval()


def fid_inputs(img_np):
    """The two preprocessing modes, as clean-fid and pytorch-fid run them."""
    clean = cleanfid.resize.build_resizer("clean")(img_np)  # float32 HWC in [0, 255]
    clean_t = torch.from_numpy(clean.transpose(2, 0, 1).copy())[None]
    legacy01 = torch.from_numpy(img_np.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    legacy = F.interpolate(legacy01, size=(299, 299), mode="bilinear", align_corners=False)
    return {
        # clean-fid's InceptionV3W: (x - 128) / 128 on the float resize.
        "clean": (clean, (clean_t - 128) / 128),
        # pytorch-fid's InceptionV3(resize_input=True, normalize_input=True) on ToTensor()'s
        # [0, 1] image.
        "legacy_pytorch": (legacy[0].numpy().transpose(1, 2, 0), 2 * legacy - 1),
    }


def make_inception(out, images):
    out.mkdir(parents=True, exist_ok=True)
    wrapper, inception = build_fid_inception(WIDTH_DIVISOR)
    prepared = [(name, fid_inputs(np.asarray(img))) for name, img in images]
    gen = torch.Generator().manual_seed(2)
    calibration = [x for _, modes in prepared for _, x in modes.values()]
    calibration.append(torch.randn((2, 3, 299, 299), generator=gen).clamp(-1, 1))
    randomise_inception(inception, calibration, gen)
    wrapper.eval()
    path = out / f"fid_inception_w{WIDTH_DIVISOR}.pth"
    torch.save(inception.state_dict(), path, _use_new_zipfile_serialization=False)
    doc = {"file": path.name, "width_divisor": WIDTH_DIVISOR, "images": []}
    for name, modes in prepared:
        entry = {"image": name}
        for mode, (resized, x) in modes.items():
            with torch.no_grad():
                pool3 = wrapper(x)[0].reshape(1, -1)
                logits = inception.fc(pool3)
                # The same through torchvision's own forward (dropout off in eval).
                assert torch.allclose(inception(x), logits, atol=1e-5)
            entry[mode] = dict(resized=summary(resized), pool3=floats(pool3[0]),
                               logits=floats(logits[0]))
        doc["images"].append(entry)
    _, full = build_fid_inception(1)
    (out / "keys_fid_inception.json").write_text(json.dumps(key_list(full), indent=0) + "\n")
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models/tests/fixtures")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    small = Image.open(FACE_API / "sample4_640.png").convert("RGB").resize(
        (61, 47), Image.Resampling.LANCZOS)
    dino_dir, inc_dir = args.out / "dino", args.out / "inception"
    for d in (dino_dir, inc_dir):
        d.mkdir(parents=True, exist_ok=True)
        small.save(d / "small_61x47.png", optimize=False)
    photo = Image.open(FACE_API / "sample1_640.png").convert("RGB")
    images = [("face-api/sample1_640.png", photo), ("small_61x47.png", small)]

    versions = dict(torch=torch.__version__, torchvision=torchvision.__version__,
                    transformers=transformers.__version__, safetensors=safetensors.__version__,
                    pillow=PIL.__version__, numpy=np.__version__,
                    pytorch_fid=pytorch_fid.__version__, clean_fid=importlib.metadata.version("clean-fid"))

    doc = make_dino(dino_dir, images)
    doc["versions"] = versions
    (dino_dir / "dino.json").write_text(json.dumps(doc, indent=1) + "\n")
    full_size_keys(dino_dir)

    doc = make_inception(inc_dir, images)
    doc["versions"] = versions
    (inc_dir / "inception.json").write_text(json.dumps(doc, indent=1) + "\n")

    for d in (dino_dir, inc_dir):
        for f in sorted(d.rglob("*")):
            if f.is_file():
                digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
                print(f"{f.relative_to(args.out)}  {f.stat().st_size:>9}  {digest}")


if __name__ == "__main__":
    main()
