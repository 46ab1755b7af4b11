#!/usr/bin/env python3
"""Write COUNT synthetic JPEGs (gradients + noise, ~200 KB at 1024x768) into DIR.

Usage: make_images.py DIR [--count 8] [--width 1024] [--height 768] [--seed 0]
Uses only numpy + opencv from the bench venv. Prints the files' sizes to stderr.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=11.0, help="noise std-dev (size knob)")
    p.add_argument("--quality", type=int, default=85)
    a = p.parse_args()
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    h, w = a.height, a.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(a.count):
        fx, fy = rng.uniform(0.002, 0.02, size=2)
        ph = rng.uniform(0, 6.28, size=3)
        img = np.stack(
            [
                127 + 60 * np.sin(xx * fx + ph[0]) + 60 * (yy / h),
                127 + 60 * np.cos(yy * fy + ph[1]) + 60 * (xx / w) - 30,
                127 + 50 * np.sin((xx + yy) * (fx + fy) / 2 + ph[2]),
            ],
            axis=-1,
        )
        img += rng.normal(0, a.noise, size=img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, a.quality])
        assert ok
        f = out / f"img{i:03d}.jpg"
        f.write_bytes(buf.tobytes())
        print(f"{f} {len(buf)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
