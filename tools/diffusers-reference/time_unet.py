"""Times diffusers' UNet2DConditionModel at Stable Diffusion 1.5 size (random weights, f32,
CPU) on the shapes of idforge's `diffusion/benches/unet_forward.rs`, for the README's side-by-side
figures.

    /tmp/venv-diffusers/bin/python tools/diffusers-reference/time_unet.py --threads 1 --latent 32

Prints one JSON line: ms per forward, best of N rounds after a warm-up, under torch.no_grad.
"""
import argparse
import json
import time

import torch
from diffusers import UNet2DConditionModel

SD15 = dict(
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    layers_per_block=2,
    sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15).eval()
    x = torch.randn(a.batch, 4, a.latent, a.latent)
    ctx = torch.randn(a.batch, 77, 768)
    t = torch.tensor([500])
    with torch.no_grad():
        unet(x, t, ctx)
        best = float("inf")
        for _ in range(a.rounds):
            s = time.perf_counter()
            unet(x, t, ctx)
            best = min(best, (time.perf_counter() - s) * 1e3)
    print(json.dumps({"model": "unet-sd15", "backend": f"torch-{torch.__version__}-cpu",
                      "threads": a.threads, "latent": a.latent, "batch": a.batch,
                      "rounds": a.rounds, "ms_per_forward": round(best, 1)}))


if __name__ == "__main__":
    main()
