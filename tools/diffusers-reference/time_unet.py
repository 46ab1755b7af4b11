"""Times diffusers' UNet2DConditionModel at Stable Diffusion 1.5 or SDXL size (random weights)
on the shapes of idforge's `diffusion/benches/unet_forward.rs`, for the README's side-by-side
figures, on the CPU or on CUDA.

    python tools/diffusers-reference/time_unet.py --threads 1 --latent 32
    python tools/diffusers-reference/time_unet.py --device cuda --dtype f16 --latent 64
    python tools/diffusers-reference/time_unet.py --device cuda --dtype bf16 --sdxl --latent 128

Prints one JSON line: ms per forward, best of N rounds after a warm-up, under torch.no_grad
(default attention processor: PyTorch's scaled_dot_product_attention, flash / memory-efficient
kernels on CUDA). On CUDA also the peak memory torch allocated and reserved during the timed
forwards (`torch.cuda.max_memory_allocated` / `max_memory_reserved`, weights included).
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

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (idforge's UNetConfig::sdxl()).
SDXL = dict(
    block_out_channels=(320, 640, 1280),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    layers_per_block=2,
    sample_size=128,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32")
    p.add_argument("--sdxl", action="store_true", help="SDXL base UNet instead of SD1.5's")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    cuda = dev.type == "cuda"
    if cuda:
        # Same arithmetic as idforge's CUDA f32 (no TF32 matmuls): torch's default for matmul,
        # set explicitly so that convolutions follow too.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    config = SDXL if a.sdxl else SD15
    # Built on the device (SDXL's 2.6 B random weights initialise in seconds there, minutes on
    # the CPU), then cast, as `from_pretrained(torch_dtype=...)` would hold them.
    with dev:
        unet = UNet2DConditionModel(**config).eval().to(dtype=dtype)
    x = torch.randn(a.batch, 4, a.latent, a.latent, device=dev, dtype=dtype)
    ctx = torch.randn(a.batch, 77, config["cross_attention_dim"], device=dev, dtype=dtype)
    t = torch.tensor([500], device=dev)
    added = None
    if a.sdxl:
        added = {
            "text_embeds": torch.randn(a.batch, 1280, device=dev, dtype=dtype),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * a.batch,
                                     device=dev, dtype=dtype),
        }

    def once():
        unet(x, t, ctx, added_cond_kwargs=added)
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():
        once()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        best = float("inf")
        for _ in range(a.rounds):
            s = time.perf_counter()
            once()
            best = min(best, (time.perf_counter() - s) * 1e3)
    row = {"model": "unet-sdxl" if a.sdxl else "unet-sd15",
           "backend": f"torch-{torch.__version__}-{a.device}-{a.dtype}",
           "latent": a.latent, "batch": a.batch, "rounds": a.rounds,
           "ms_per_forward": round(best, 1)}
    if cuda:
        row["device_name"] = torch.cuda.get_device_name(dev)
        row["tf32"] = False
        row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(dev) / 2**20, 1)
    else:
        row["threads"] = a.threads
    print(json.dumps(row))


if __name__ == "__main__":
    main()
