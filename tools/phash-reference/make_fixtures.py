#!/usr/bin/env python3
"""Golden fixtures for idforge's perceptual hash, from the reference `imagehash`.

Usage (from the repository root):

    python3 -m venv .venv-tools
    .venv-tools/bin/pip install -r tools/phash-reference/requirements.txt
    tools/fetch-assets
    .venv-tools/bin/python tools/phash-reference/make_fixtures.py

Reads the face-api demo photos (demo/sample{1..6}.jpg) from the directory that
`tools/fetch-assets --print-dir` names (override with --assets) and writes into
ingest/tests/fixtures/phash/ (override with --out):

  sample1_160.png, sample3_160.png, sample5_160.png
      RGB, PIL LANCZOS downscale of the demo JPEG to 160 px on the long side
      (short side = round(short * 160 / long)). Lossless parity inputs: a Rust
      implementation decoding these PNGs sees exactly the pixels imagehash saw.
  sample1_160_q40.png   sample1_160 re-encoded as JPEG quality 40 (Pillow
                        defaults otherwise), decoded, stored as PNG.
  sample1_150.png       sample1_160 resized (LANCZOS) to 150 px on the long side.
  sample1_160_flip.png  sample1_160 mirrored left-right (a different image).
  phash.json            {"reference", "params", "hashes", "distances",
                         "dct8x8", "dct8x8_median", "sizes"}

  "hashes" also has "demo/sampleN.jpg" for all six demo JPEGs, hashed from
  Pillow's own JPEG decode (bundled libjpeg-turbo, 4:2:2 chroma, fancy
  upsampling). A different JPEG decoder can differ by a few grey levels, so
  treat those as near-matches (small Hamming distance), not exact parity.
  "distances" are Hamming distances (imagehash's `h1 - h2`).

PNGs are written without ancillary chunks (the demo JPEGs carry EXIF and an ICC
profile; neither is copied, and neither affects imagehash: Pillow applies no
colour management and no EXIF orientation in open/convert/resize). The output is
deterministic: re-running with the pinned versions rewrites identical bytes.

What imagehash.phash computes (hash_size=8, highfreq_factor=4)
================================================================
Read from the installed sources (paths relative to
.venv-tools/lib/python3.11/site-packages/, versions as in requirements.txt),
plus Pillow's C sources from the pillow-13.0.0 sdist (the wheel ships them
compiled), and re-checked numerically by `self_check()` below, which
re-implements every step in plain numpy and asserts bit-identical grey
matrices and hashes for every fixture:

imagehash/__init__.py, phash() (lines 261-281):
    img_size = hash_size * highfreq_factor                  # 32
    image = image.convert('L').resize((32, 32), ANTIALIAS)
    pixels = numpy.asarray(image)                           # uint8, [row][col]
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    dctlowfreq = dct[:8, :8]
    med = numpy.median(dctlowfreq)
    diff = dctlowfreq > med
    return ImageHash(diff)
  ANTIALIAS (lines 38-43) = Image.Resampling.LANCZOS (Image.ANTIALIAS on
  Pillow < 10, the same filter). The resize is to a fixed 32x32 square: the
  aspect ratio is NOT preserved.

1. Greyscale, Image.convert('L') for an RGB image -> ImagingConvert -> rgb2l()
   in src/libImaging/Convert.c (macro L24, line 39):
       L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
   i.e. the documented "R*299/1000 + G*587/1000 + B*114/1000" in 16-bit fixed
   point (weights sum to 65536) with round-half-up via +0x8000, then truncating
   shift. Not the float formula: e.g. results can differ by 1 from
   round(0.299R+0.587G+0.114B). (Line 38's L() macro with 299/587/114 is used
   by other conversions, not RGB->L.)

2. Resize to 32x32 with LANCZOS: PIL/Image.py Image.resize() (line 2332): with
   the default reducing_gap=None no reduce() pre-step runs; box = full image;
   then ImagingResample() in src/libImaging/Resample.c:
   - filter lanczos_filter(): sinc(x)*sinc(x/3) for -3 <= x < 3, else 0,
     sinc(x) = sin(pi x)/(pi x), sinc(0) = 1; support 3.0 (struct LANCZOS).
   - precompute_coeffs(), per axis: scale = in/out; filterscale = max(scale,1);
     support = 3.0*filterscale; for output index i: center = (i+0.5)*scale,
     xmin = max(0, (int)(center - support + 0.5)),
     xmax = min(in, (int)(center + support + 0.5)) (count = xmax - xmin),
     w[j] = lanczos((j + xmin - center + 0.5) * (1.0/filterscale)),
     j = 0..count-1, then w /= sum(w) (double precision).
   - normalize_coeffs_8bpc(): each weight to fixed point with
     PRECISION_BITS = 22: k = (int)(w*2^22 + 0.5) for w >= 0,
     (int)(w*2^22 - 0.5) for w < 0 (truncation toward zero).
   - each pass: acc = 2^21 + sum(pixel * k) in 32-bit int; out =
     clamp(acc >> 22, 0, 255) (clip8(), arithmetic shift).
   - ImagingResampleInner(): two separable passes with an 8-bit rounded
     intermediate image. Horizontal first, unless
     (in_h - out_h) > 0 and (in_h - out_h) > 2*(in_w - out_w), in which case
     vertical first. A pass is skipped when that axis keeps its size.
     (All fixtures here are landscape, so horizontal runs first.)

3. DCT: scipy.fftpack.dct (scipy/fftpack/_realtransforms.py, dct(), line 235,
   defaults type=2, norm=None) -> scipy.fft._pocketfft.realtransforms._r2r():
   the uint8 input is converted to float64 by helper._asfarray(); norm=None
   means NO normalisation (no orthonormal scaling):
       y[k] = 2 * sum_{n=0}^{N-1} x[n] * cos(pi*k*(2n+1)/(2N)),  N = 32
   applied along axis 0 (columns: index = vertical frequency), then axis 1.
   So dct[u][v] = 4 * sum_y sum_x p[y][x] cos(pi u (2y+1)/64) cos(pi v (2x+1)/64),
   u = row/vertical frequency, v = column/horizontal frequency; dct[0][0] =
   4 * sum of all 1024 pixels.

4. Median: numpy.median of the 64 values dct[0..7][0..7], DC term dct[0][0]
   included (numpy/lib/_function_base_impl.py, _median(): even count -> mean
   of the 32nd and 33rd smallest values). bit[u][v] = dct[u][v] > median
   (strict), so exactly 32 bits are set unless values tie at the median.

5. Hex string: ImageHash.__str__ -> _binary_array_to_hex() (line 82): the 8x8
   bool array flattened row-major (u outer, v inner), joined as a bit string,
   int(bits, 2), formatted as 16 zero-padded lowercase hex digits. The first
   bit, dct[0][0] > median, is the most significant bit of the 64-bit value.
   Hamming distance (__sub__, line 106) = number of differing bits.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
LANCZOS = Image.Resampling.LANCZOS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "ingest" / "tests" / "fixtures" / "phash"

PARITY_SAMPLES = ["sample1", "sample3", "sample5"]
DEMO_JPEGS = [f"sample{i}.jpg" for i in range(1, 7)]
PARITY_LONG_SIDE = 160
VARIANT_LONG_SIDE = 150
JPEG_QUALITY = 40


# --- helpers -------------------------------------------------------------------


def clean_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy with no metadata (EXIF, ICC, dpi) so PNGs carry pixels only."""
    rgb = im.convert("RGB")
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def resize_long_side(im: Image.Image, long_side: int) -> Image.Image:
    w, h = im.size
    if w >= h:
        size = (long_side, max(1, round(h * long_side / w)))
    else:
        size = (max(1, round(w * long_side / h)), long_side)
    return clean_rgb(im.resize(size, LANCZOS))


def save_png(im: Image.Image, path: Path) -> None:
    # optimize=True: smaller files; still deterministic for a given zlib.
    im.save(path, format="PNG", optimize=True)


def phash(im: Image.Image) -> imagehash.ImageHash:
    return imagehash.phash(im, hash_size=HASH_SIZE, highfreq_factor=HIGHFREQ_FACTOR)


def dct_lowfreq(im: Image.Image) -> np.ndarray:
    """The 8x8 block exactly as imagehash.phash computes it."""
    size = HASH_SIZE * HIGHFREQ_FACTOR
    pixels = np.asarray(im.convert("L").resize((size, size), LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    return dct[:HASH_SIZE, :HASH_SIZE]


# --- independent re-implementation (checks the docstring) ------------------------

PRECISION_BITS = 22


def _lanczos(x: float) -> float:
    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    if -3.0 <= x < 3.0:
        return sinc(x) * sinc(x / 3)
    return 0.0


def _coeffs(in_size: int, out_size: int) -> list[tuple[int, list[int]]]:
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    inv = 1.0 / filterscale
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(0, int(center - support + 0.5))
        xmax = min(in_size, int(center + support + 0.5)) - xmin
        w = [_lanczos((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        ww = sum(w)  # same left-to-right summation order as the C loop
        if ww != 0.0:
            w = [v / ww for v in w]
        k = [
            int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
            for v in w
        ]
        out.append((xmin, k))
    return out


def _pass(a: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One 8-bit resampling pass of Pillow's ImagingResample along `axis`."""
    a = np.moveaxis(a.astype(np.int64), axis, -1)
    res = np.empty(a.shape[:-1] + (out_size,), dtype=np.int64)
    for i, (xmin, k) in enumerate(_coeffs(a.shape[-1], out_size)):
        acc = (1 << (PRECISION_BITS - 1)) + a[..., xmin : xmin + len(k)] @ np.array(k, np.int64)
        res[..., i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(res, -1, axis).astype(np.uint8)


def ref_grey32(im: Image.Image) -> np.ndarray:
    """convert('L') + resize((32, 32), LANCZOS), re-implemented from the C source."""
    rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    in_h, in_w = grey.shape
    out = HASH_SIZE * HIGHFREQ_FACTOR
    horizontal_first = not ((in_h - out) > 0 and (in_h - out) > (in_w - out) * 2)
    a = grey.astype(np.uint8)
    passes = [(1, in_w), (0, in_h)] if horizontal_first else [(0, in_h), (1, in_w)]
    for axis, in_size in passes:
        if in_size != out:
            a = _pass(a, out, axis)
    return a


def ref_hash(grey32: np.ndarray) -> tuple[str, np.ndarray, float]:
    n = grey32.shape[0]
    idx = np.arange(n)
    # DCT-II, scipy norm=None: y[k] = 2 * sum x[n] cos(pi k (2n+1) / 2N)
    c = 2.0 * np.cos(np.pi * np.outer(idx, 2 * idx + 1) / (2 * n))
    dct = c @ grey32.astype(np.float64) @ c.T
    low = dct[:HASH_SIZE, :HASH_SIZE]
    flat = np.sort(low.ravel())
    med = (flat[31] + flat[32]) / 2
    value = 0
    for bit in (low > med).ravel():  # row-major, first bit = MSB
        value = (value << 1) | int(bit)
    return f"{value:016x}", low, med


def self_check(images: dict[str, Image.Image], hashes: dict[str, str]) -> None:
    for name, im in images.items():
        size = HASH_SIZE * HIGHFREQ_FACTOR
        pil_grey = np.asarray(im.convert("L").resize((size, size), LANCZOS))
        mine = ref_grey32(im)
        if not np.array_equal(pil_grey, mine):
            diff = int(np.abs(pil_grey.astype(int) - mine.astype(int)).max())
            raise SystemExit(f"self-check: 32x32 grey of {name} differs from Pillow (max {diff})")
        h, low, _ = ref_hash(mine)
        if h != hashes[name]:
            raise SystemExit(f"self-check: hash of {name}: mine {h} != imagehash {hashes[name]}")
        if not np.allclose(low, dct_lowfreq(im), rtol=0, atol=1e-6):
            raise SystemExit(f"self-check: DCT of {name} differs from scipy.fftpack")
    print(f"self-check: re-implementation matches imagehash on {len(images)} images", file=sys.stderr)


# --- main --------------------------------------------------------------------------


def default_assets() -> Path:
    out = subprocess.run(
        [str(REPO_ROOT / "tools" / "fetch-assets"), "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--assets", type=Path, help="face-api dir (default: tools/fetch-assets --print-dir)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output dir (default: {DEFAULT_OUT})")
    args = ap.parse_args()

    assets = args.assets or default_assets()
    if not (assets / ".complete").is_file():
        raise SystemExit(f"{assets} is missing or incomplete: run tools/fetch-assets first")
    demo = assets / "demo"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    pngs: dict[str, Image.Image] = {}
    for s in PARITY_SAMPLES:
        with Image.open(demo / f"{s}.jpg") as src:
            pngs[f"{s}_{PARITY_LONG_SIDE}.png"] = resize_long_side(src, PARITY_LONG_SIDE)

    base_name = f"sample1_{PARITY_LONG_SIDE}.png"
    base = pngs[base_name]
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    with Image.open(buf) as q:
        pngs[f"sample1_{PARITY_LONG_SIDE}_q{JPEG_QUALITY}.png"] = clean_rgb(q)
    pngs[f"sample1_{VARIANT_LONG_SIDE}.png"] = resize_long_side(base, VARIANT_LONG_SIDE)
    pngs[f"sample1_{PARITY_LONG_SIDE}_flip.png"] = clean_rgb(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT))

    for name, im in pngs.items():
        save_png(im, out / name)

    # Hash what a consumer of the fixtures will decode: re-read the PNGs from disk.
    loaded: dict[str, Image.Image] = {}
    for name in pngs:
        with Image.open(out / name) as im:
            im.load()
            loaded[name] = im.copy()
            if not np.array_equal(np.asarray(loaded[name]), np.asarray(pngs[name])):
                raise SystemExit(f"{name}: PNG round trip changed pixels")

    hash_objs: dict[str, imagehash.ImageHash] = {name: phash(im) for name, im in loaded.items()}
    demo_imgs: dict[str, Image.Image] = {}
    for j in DEMO_JPEGS:
        with Image.open(demo / j) as im:
            im.load()
            demo_imgs[f"demo/{j}"] = im.copy()
            hash_objs[f"demo/{j}"] = phash(im)
    hashes = {k: str(v) for k, v in hash_objs.items()}

    # Synthetic noise images reach the branches the photos do not: vertical pass
    # first (tall), upscaling (small), a skipped pass (one side already 32).
    rng = np.random.default_rng(0)
    synthetic: dict[str, Image.Image] = {}
    for w, h in [(50, 400), (400, 50), (20, 13), (32, 300), (300, 32), (32, 32)]:
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        synthetic[f"noise_{w}x{h}"] = Image.fromarray(arr, "RGB")
    self_check(
        {**loaded, **demo_imgs, **synthetic},
        {**hashes, **{k: str(phash(v)) for k, v in synthetic.items()}},
    )

    pairs = [
        (base_name, f"sample1_{PARITY_LONG_SIDE}_q{JPEG_QUALITY}.png"),
        (base_name, f"sample1_{VARIANT_LONG_SIDE}.png"),
        (base_name, f"sample1_{PARITY_LONG_SIDE}_flip.png"),
        ("demo/sample1.jpg", base_name),
    ]
    distances = {f"{a}|{b}": int(hash_objs[a] - hash_objs[b]) for a, b in pairs}

    low = dct_lowfreq(loaded[base_name])
    med = float(np.median(low))

    doc = {
        "reference": (
            # Distribution versions (pywt.__version__ of the 1.9.0 wheel says 1.8.0).
            f"imagehash {version('ImageHash')}, Pillow {version('pillow')}, "
            f"scipy {version('scipy')}, numpy {version('numpy')}, PyWavelets {version('PyWavelets')}"
        ),
        "params": {
            "hash_size": HASH_SIZE,
            "highfreq_factor": HIGHFREQ_FACTOR,
            "resample": "PIL LANCZOS (a=3), fixed-point, 32x32 square",
            "grey": "L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16",
            "dct": "scipy.fftpack.dct type 2, norm=None, axis 0 then axis 1",
            "bits": "dct[u][v] > median(dct[0..8][0..8]), row-major, first bit = MSB",
        },
        "hashes": hashes,
        "distances": distances,
        "dct8x8": {base_name: [round(float(v), 6) for v in low.ravel()]},
        "dct8x8_median": {base_name: round(med, 6)},
        "sizes": {name: list(im.size) for name, im in loaded.items()},
    }
    (out / "phash.json").write_text(json.dumps(doc, indent=2) + "\n")

    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>8}  {p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p}", file=sys.stderr)
    print(json.dumps(hashes, indent=2))
    print(json.dumps(distances, indent=2))


if __name__ == "__main__":
    main()
