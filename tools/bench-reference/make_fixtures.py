#!/usr/bin/env python3
"""Golden fixtures for idforge-bench's set-level metrics (bench/src/stats/): FID and KID as
clean-fid computes them, the Inception Score as torchmetrics computes it, CMMD as
google-research/cmmd's distance.py computes it, and CLIP-T as torchmetrics' CLIPScore computes
it on the tiny random-weight CLIP of models/tests/fixtures/clip/.

Usage (from the repository root): tools/bench-reference/run (makes the venv, then runs this).

Writes bench/tests/fixtures/metrics/:

  sets.json   the feature sets (as generator parameters, see `features` below: the Rust test
              regenerates them bit for bit and checks the first values and the exact sum kept
              here) and, per case, the reference values:
                fid       cleanfid.fid.frechet_distance on mu = mean, sigma = np.cov(rowvar=False)
                          of the features in float64;
                fid_exact the same distance with Tr sqrtm(S1 S2) taken as the nuclear norm of
                          A B^T (numpy SVD), which is exact to rounding; scipy's sqrtm of the
                          singular d x d product is not, and the difference is kept to justify
                          the test's tolerance;
                fid_f32   clean-fid's own pipeline on float32 features (np.mean in float32), for
                          information;
                kid       cleanfid.fid.kernel_distance on the float64 features (equal set sizes,
                          so every subset is a permutation of the whole set), and kid_f32 on the
                          float32 ones;
                is_mean, is_std   torchmetrics InceptionScore (feature = the identity, so the
                          "features" are the given logits) with torch.randperm replaced by
                          torch.arange: the logits in the given order; float64 and float32;
                cmmd      google-research/cmmd distance.py `mmd`, reimplemented in numpy (it is
                          JAX code in a research repository, not a package), in float64.
  clip_score.json   images, prompts, torchmetrics CLIPScore on them with the tiny model
              (tiny_hf_gelu) saved as a local transformers CLIPModel + CLIPProcessor folder, and
              the per-pair 100 cos of torchmetrics' update function.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import PIL
import scipy
import torch
import torchmetrics
import transformers
from PIL import Image

import cleanfid
from cleanfid.fid import frechet_distance, kernel_distance

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench/tests/fixtures/metrics"
CLIP = ROOT / "models/tests/fixtures/clip"
FACE_API = ROOT / "models/tests/fixtures/face-api"

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------------------------------------
# Features: a counter-based generator that Rust reproduces exactly (only +, -, *, /, sqrt and
# max on IEEE doubles, in a fixed order, then one rounding to float32).

def uniforms(seed, count):
    """splitmix64: state_k = seed + (k + 1) * GOLDEN (mod 2^64), mixed; (z >> 11) * 2^-53."""
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK) + k * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def features(spec):
    """x[i, j] = shift + noise (e[i, j] − ½) + Σ_r (factor (c[i, r] − ½)) (l[r, j] − ½), then
    max(x, 0) if relu, then L2-normalised rows if unit, then float32. e and c (in that order)
    come from `seed`, l from `loadings_seed` (shared between the two sets of a case, so that
    they differ in distribution but not completely)."""
    n, d, r = spec["n"], spec["dim"], spec["rank"]
    u = uniforms(spec["seed"], n * d + n * r)
    e = u[:n * d].reshape(n, d)
    c = u[n * d:].reshape(n, r)
    l = uniforms(spec["loadings_seed"], r * d).reshape(r, d)
    x = spec["shift"] + spec["noise"] * (e - 0.5)
    for k in range(r):
        x = x + (spec["factor"] * (c[:, k:k + 1] - 0.5)) * (l[k:k + 1, :] - 0.5)
    if spec.get("relu"):
        x = np.maximum(x, 0.0)
    if spec.get("unit"):
        sq = np.zeros(n)
        for j in range(d):  # sequential, as the Rust side sums
            sq = sq + x[:, j] * x[:, j]
        x = x / np.sqrt(sq)[:, None]
    return x.astype(np.float32)


def check(x):
    """What the Rust test compares its regenerated features with."""
    flat = x.astype(np.float64).ravel()
    return {"first": [float(v) for v in flat[:6]], "sum": math.fsum(flat)}


def spec(seed, n, dim, rank=4, shift=0.0, noise=1.0, factor=2.0, loadings_seed=1000, **kw):
    return dict(seed=seed, n=n, dim=dim, rank=rank, shift=shift, noise=noise, factor=factor,
                loadings_seed=loadings_seed, **kw)


# ---------------------------------------------------------------------------------------------
# References.

def fid_refs(x1, x2):
    a64, b64 = x1.astype(np.float64), x2.astype(np.float64)
    mu1, mu2 = a64.mean(0), b64.mean(0)
    s1, s2 = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    fid = float(frechet_distance(mu1, s1, mu2, s2))
    a = (a64 - mu1) / math.sqrt(len(a64) - 1)
    b = (b64 - mu2) / math.sqrt(len(b64) - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mu1 - mu2
    exact = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    # clean-fid's own pipeline on float32 features (compute_fid → mean in float32, np.cov in
    # float64).
    f32 = float(frechet_distance(np.mean(x1, axis=0), np.cov(x1, rowvar=False),
                                 np.mean(x2, axis=0), np.cov(x2, rowvar=False)))
    return {"fid": fid, "fid_exact": exact, "fid_f32": f32}


def kid_refs(x1, x2):
    np.random.seed(0)
    kid = kernel_distance(x1.astype(np.float64), x2.astype(np.float64))
    np.random.seed(0)
    kid32 = kernel_distance(x1, x2)
    return {"kid": float(kid), "kid_f32": float(kid32)}


def inception_score(logits, splits):
    """torchmetrics' InceptionScore, its extractor replaced by the identity (the update's
    input is then the logits) and its random permutation by the identity permutation."""
    from torchmetrics.image.inception import InceptionScore

    metric = InceptionScore(feature=torch.nn.Identity(), splits=splits)
    metric.update(logits)
    arange = lambda n, *a, **k: torch.arange(n)
    with mock.patch("torch.randperm", arange):
        mean, std = metric.compute()
    return float(mean), float(std)


def is_refs(x, splits):
    m64, s64 = inception_score(torch.from_numpy(x.astype(np.float64)), splits)
    m32, s32 = inception_score(torch.from_numpy(x), splits)
    return {"splits": splits, "is_mean": m64, "is_std": s64, "is_mean_f32": m32, "is_std_f32": s32}


SIGMA = 10
SCALE = 1000


def cmmd_mmd(x, y):
    """google-research/cmmd distance.py `mmd` (JAX) in numpy: the same expression, float64."""
    x_sqnorms = np.diag(x @ x.T)
    y_sqnorms = np.diag(y @ y.T)
    gamma = 1 / (2 * SIGMA ** 2)
    k_xx = np.mean(np.exp(-gamma * (-2 * (x @ x.T) + x_sqnorms[:, None] + x_sqnorms[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * (x @ y.T) + x_sqnorms[:, None] + y_sqnorms[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * (y @ y.T) + y_sqnorms[:, None] + y_sqnorms[None, :])))
    return SCALE * (k_xx + k_yy - 2 * k_xy)


def cmmd_refs(x1, x2):
    return {"cmmd": float(cmmd_mmd(x1.astype(np.float64), x2.astype(np.float64))),
            "cmmd_f32": float(cmmd_mmd(x1, x2))}


CASES = [
    # FID through the d x d route (both sets have at least d rows), n1 != n2.
    ("fid_d16_n50_n40", spec(1, 50, 16, rank=3), spec(2, 40, 16, rank=3, shift=0.3, factor=2.5),
     ["fid"]),
    # The small-matrix route, n1 != n2, KID not (sizes differ).
    ("fid_d64_n60_n45", spec(3, 60, 64), spec(4, 45, 64, shift=0.1, noise=1.2), ["fid"]),
    # Inception-sized, ReLU'd (non-negative, as pool3 features), equal sizes: FID and KID.
    ("d2048_n40", spec(5, 40, 2048, rank=6, shift=0.2, relu=True),
     spec(6, 40, 2048, rank=6, shift=0.25, noise=0.9, relu=True), ["fid", "kid"]),
    ("kid_d64_n50", spec(7, 50, 64), spec(8, 50, 64, shift=0.2), ["fid", "kid"]),
    # CLIP-sized unit embeddings for CMMD, n1 != n2.
    ("cmmd_d768_n40_n30", spec(9, 40, 768, rank=5, shift=0.05, unit=True),
     spec(10, 30, 768, rank=5, shift=0.08, factor=2.2, unit=True), ["cmmd"]),
    ("cmmd_d64_n20_n20", spec(11, 20, 64, unit=True), spec(12, 20, 64, shift=0.5, unit=True),
     ["cmmd"]),
]

# Logits for the Inception Score: (name, spec, splits). 53 rows in 10 splits make 9 chunks of
# 6 and 5 (torch.chunk), 20 in 3 make 7, 7, 6.
IS_CASES = [
    ("is_n50_c1008_s10", spec(20, 50, 1008, rank=8, noise=2.0, factor=12.0, loadings_seed=21), 10),
    ("is_n53_c100_s10", spec(22, 53, 100, rank=5, noise=3.0, factor=10.0, loadings_seed=23), 10),
    ("is_n20_c10_s3", spec(24, 20, 10, rank=2, noise=4.0, factor=6.0, loadings_seed=25), 3),
]


def set_fixtures():
    cases = []
    for name, s1, s2, metrics in CASES:
        x1, x2 = features(s1), features(s2)
        case = {"name": name, "a": s1, "b": s2, "a_check": check(x1), "b_check": check(x2)}
        if "fid" in metrics:
            case.update(fid_refs(x1, x2))
            print(f"{name}: FID {case['fid']:.9g}, sqrtm vs exact "
                  f"{abs(case['fid'] - case['fid_exact']) / abs(case['fid_exact']):.1e} relative, "
                  f"f32 pipeline {abs(case['fid_f32'] - case['fid_exact']) / abs(case['fid_exact']):.1e}")
        if "kid" in metrics:
            case.update(kid_refs(x1, x2))
            print(f"{name}: KID {case['kid']:.9g} (f32 {case['kid_f32']:.9g})")
        if "cmmd" in metrics:
            case.update(cmmd_refs(x1, x2))
            print(f"{name}: CMMD {case['cmmd']:.9g} (f32 {case['cmmd_f32']:.9g})")
        cases.append(case)
    is_cases = []
    for name, s, splits in IS_CASES:
        x = features(s)
        case = {"name": name, "logits": s, "logits_check": check(x)}
        case.update(is_refs(x, splits))
        print(f"{name}: IS {case['is_mean']:.9g} ± {case['is_std']:.9g} "
              f"(f32 {case['is_mean_f32']:.9g} ± {case['is_std_f32']:.9g})")
        is_cases.append(case)
    dump_json(OUT / "sets.json", {"versions": versions(), "generator": features.__doc__.strip(),
                                  "sets": cases, "inception_score": is_cases})


# ---------------------------------------------------------------------------------------------
# CLIP-T with torchmetrics' CLIPScore on the tiny model.

# Under models/tests/fixtures/.
IMAGES = ["face-api/sample1_640.png", "face-api/sample4_640.png", "clip/images/crop_96x130.png",
          "clip/images/crop_88x47.png"]
PROMPTS = ["a photo of a cat", "portrait of a smiling woman, studio light",
           "a man in a red jacket", "a close-up photo of a face"]


def clip_model_dir(work):
    """transformers' folder for the tiny CLIP: torchmetrics 1.9 accepts a path only when it
    contains "openai" (its list of known checkpoints), hence the name."""
    d = work / "openai-tiny-clip-hf-gelu"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    shutil.copy(CLIP / "tiny_hf_gelu.config.json", d / "config.json")
    shutil.copy(CLIP / "tiny_hf_gelu.safetensors", d / "model.safetensors")
    tokenizer = transformers.CLIPTokenizerFast(tokenizer_file=str(CLIP / "tiny_tokenizer.json"))
    size = json.loads((CLIP / "tiny_hf_gelu.config.json").read_text())["vision_config"][
        "image_size"]
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    transformers.CLIPProcessor(image_processor=image_processor,
                               tokenizer=tokenizer).save_pretrained(d)
    return d


def clip_fixtures(work):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.multimodal.clip_score import CLIPScore

    d = clip_model_dir(work)
    metric = CLIPScore(model_name_or_path=str(d))
    # What torchmetrics' docs pass: uint8 CHW tensors (one list, sizes may differ).
    images = [torch.from_numpy(np.array(Image.open(CLIP.parent / n).convert("RGB")))
              .permute(2, 0, 1).contiguous() for n in IMAGES]
    metric.update(images, PROMPTS)
    score = float(metric.compute())
    with torch.no_grad():
        per_pair, _ = _clip_score_update(images, PROMPTS, metric.model, metric.processor)
    per_pair = [float(v) for v in per_pair]
    print(f"CLIPScore {score:.6f}; per pair 100 cos {per_pair}")
    dump_json(OUT / "clip_score.json", {
        "versions": versions(), "model": "models/tests/fixtures/clip/tiny_hf_gelu",
        "images": IMAGES, "prompts": PROMPTS, "clip_score": score, "per_pair": per_pair})


def dump_json(path, value):
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def versions():
    return {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
            "clean-fid": getattr(cleanfid, "__version__", "0.1.35"),
            "torch": torch.__version__, "torchmetrics": torchmetrics.__version__,
            "transformers": transformers.__version__, "pillow": PIL.__version__}


def main():
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/idforge-bench-reference"))
    args = parser.parse_args()
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    set_fixtures()
    clip_fixtures(args.work)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e3:.1f} kB in {OUT}")


if __name__ == "__main__":
    main()
