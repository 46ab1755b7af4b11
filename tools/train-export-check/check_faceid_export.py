"""Checks an IP-Adapter-FaceID file exported by `idforge train` against diffusers.

diffusers' StableDiffusionPipeline loads the file with its own `load_ip_adapter` (the FaceID
LoRA included), samples a guided DDIM loop from fixed noise and random L2-normalised ID
embeddings; `idforge generate --adapter <file> --id-embeds … --noise …` samples the same loop.
The two PNGs must agree within one 8-bit level per channel (diffusers' float32 vs burn's).

Not run by CI (it needs the diffusers venv): run it by hand through ./run, e.g.

    tools/train-export-check/run --adapter runs/demo/train/adapter.safetensors \
        --model diffusion/tests/fixtures/tiny-sd --idforge target/debug/idforge
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", type=Path, required=True, help="the exported adapter.safetensors")
    p.add_argument("--model", type=Path, required=True, help="the diffusers SD 1.x folder it was trained on")
    p.add_argument("--idforge", type=Path, required=True, help="the idforge binary")
    p.add_argument("--prompt", default="a photo of a person")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-level", type=int, default=1, help="largest allowed 8-bit difference")
    args = p.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(args.seed)
    weights = load_file(str(args.adapter))
    id_dim = weights["image_proj.proj.0.weight"].shape[1]
    ids = torch.nn.functional.normalize(torch.randn(1, 1, id_dim), dim=-1)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    down = pipe.vae_scale_factor
    noise = torch.randn(1, pipe.unet.config.in_channels, args.size // down, args.size // down)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(str(args.adapter.parent), subfolder="", weight_name=args.adapter.name,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(args.scale)
    with torch.no_grad():
        image = pipe(args.prompt, negative_prompt="", height=args.size, width=args.size,
                     num_inference_steps=args.steps, guidance_scale=args.cfg, latents=noise.clone(),
                     ip_adapter_image_embeds=[torch.cat([torch.zeros_like(ids), ids])],
                     output_type="np").images[0]
    want = (np.clip(image, 0, 1) * 255).round().astype(np.int16)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.safetensors"
        save_file({"id_embeds": ids[0].contiguous(), "noise": noise.contiguous()}, str(inputs))
        png = Path(tmp) / "idforge.png"
        subprocess.run([str(args.idforge), "generate", "--model", str(args.model),
                        "--prompt", args.prompt, "--negative-prompt", "", "--steps", str(args.steps),
                        "--cfg", str(args.cfg), "--sampler", "ddim", "--noise", str(inputs),
                        "--noise-tensor", "noise", "--adapter", str(args.adapter), "--id-embeds",
                        str(inputs), "--adapter-scale", str(args.scale), "-o", str(png)], check=True)
        got = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    diff = int(np.abs(got - want).max())
    print(f"max |idforge − diffusers| = {diff} levels of 255 (allowed {args.max_level})")
    sys.exit(0 if diff <= args.max_level else 1)


if __name__ == "__main__":
    main()
