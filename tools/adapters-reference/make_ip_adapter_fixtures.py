#!/usr/bin/env python3
"""IP-Adapter parity fixtures for idforge-diffusion's adapters (diffusion/src/adapters/).

For each kind of the IP-Adapter family -- plain (ImageProjModel), Plus (Resampler), full-face
(MLPProjModel, 257-token kind), FaceID (MLPProjModel + LoRA on every attention processor) and
FaceID-Plus V2 (ProjPlusModel + FacePerceiverResampler, shortcut) -- this script draws a random
state dict in the ORIGINAL tencent-ailab/IP-Adapter layout (`image_proj.*`, `ip_adapter.{i}.*`,
i the attn_processors index), saves it as one safetensors file, loads it into the tiny SD
pipeline of diffusion/tests/fixtures/tiny-sd with diffusers' own `load_ip_adapter`
(image_encoder_folder=None; FaceID's LoRA through the PEFT backend), sets the IP scale and runs
the UNet with `added_cond_kwargs={"image_embeds": [embeds]}`.

Writes diffusion/tests/fixtures/ip-adapter/:
  <kind>.safetensors       the adapter file (original layout), tiny SD
  sdxl_<kind>.safetensors  plain and FaceID for the tiny SDXL UNet
  loop_faceid.safetensors  a whole guided 10-step DDIM loop with FaceID from fixed noise: its
                           inputs (id_embeds, noise) and diffusers' image
  parity.safetensors       inputs (sample, timestep, text context, per-kind embeds) and
                           diffusers' UNet outputs (<kind>.out), float32
  parity.json              scales, shapes, versions

Shapes are tiny (the UNet's cross-attention width is 8) but keep the published files' rules:
4 tokens for plain (diffusers hard-codes it), resampler heads = to_q.out / 64 (dim_head 64),
depth 4 (diffusers' renaming covers layers 0-3 only). Two reference images per row for plain
and FaceID, so the token concatenation of several references is covered.

Run with tools/adapters-reference/run (the venv of tools/diffusers-reference plus peft).
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
# The guided loop with FaceID: DDIM (the tiny pipeline's scheduler), 64 px, negative "".
LOOP = {"prompt": "a photo of a man wearing a red hat", "steps": 10, "guidance": 7.5, "scale": 0.8}
FIXTURES = ROOT / "diffusion/tests/fixtures"


def randn(*shape, std=0.3):
    return torch.randn(*shape) * std


def layernorm(prefix, dim, sd):
    sd[f"{prefix}.weight"] = 1.0 + randn(dim, std=0.1)
    sd[f"{prefix}.bias"] = randn(dim, std=0.1)


def linear(prefix, inp, out, sd, bias=True, std=None):
    sd[f"{prefix}.weight"] = randn(out, inp, std=std or inp ** -0.5)
    if bias:
        sd[f"{prefix}.bias"] = randn(out, std=0.1)


def resampler(prefix, emb, dim, out, heads, depth, sd):
    inner = heads * 64
    linear(f"{prefix}proj_in", emb, dim, sd)
    linear(f"{prefix}proj_out", dim, out, sd)
    layernorm(f"{prefix}norm_out", out, sd)
    for i in range(depth):
        a = f"{prefix}layers.{i}.0"
        layernorm(f"{a}.norm1", dim, sd)
        layernorm(f"{a}.norm2", dim, sd)
        linear(f"{a}.to_q", dim, inner, sd, bias=False)
        linear(f"{a}.to_kv", dim, 2 * inner, sd, bias=False)
        linear(f"{a}.to_out", inner, dim, sd, bias=False)
        f = f"{prefix}layers.{i}.1"
        layernorm(f"{f}.0", dim, sd)
        linear(f"{f}.1", dim, 4 * dim, sd, bias=False)
        linear(f"{f}.3", 4 * dim, dim, sd, bias=False)


def image_proj(kind, cross):
    sd = {}
    if kind == "plain":
        linear("proj", 16, 4 * cross, sd)
        layernorm("norm", cross, sd)
    elif kind == "full_face":
        linear("proj.0", 16, 16, sd)
        linear("proj.2", 16, cross, sd)
        layernorm("proj.3", cross, sd)
    elif kind == "faceid":
        linear("proj.0", 16, 32, sd)
        linear("proj.2", 32, 4 * cross, sd)
        layernorm("norm", cross, sd)
    elif kind == "plus":
        sd["latents"] = torch.randn(1, 6, 64) / 64 ** 0.5
        resampler("", 16, 64, cross, 1, 4, sd)
    elif kind == "faceid_plus_v2":
        linear("proj.0", 16, 32, sd)
        linear("proj.2", 32, 4 * cross, sd)
        layernorm("norm", cross, sd)
        resampler("perceiver_resampler.", 16, cross, cross, 1, 4, sd)
    return sd


def ip_layers(unet, kind, cross):
    sd = {}
    names = list(unet.attn_processors.keys())
    blocks = unet.config.block_out_channels
    for i, name in enumerate(names):
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        if not name.endswith("attn1.processor"):
            linear(f"{i}.to_k_ip", cross, hidden, sd, bias=False)
            linear(f"{i}.to_v_ip", cross, hidden, sd, bias=False)
        if kind == "faceid":
            r = 3
            kv_in = hidden if name.endswith("attn1.processor") else cross
            for p, inp, out in [("q", hidden, hidden), ("k", kv_in, hidden), ("v", kv_in, hidden), ("out", hidden, hidden)]:
                sd[f"{i}.to_{p}_lora.down.weight"] = randn(r, inp, std=1.0 / r)
                sd[f"{i}.to_{p}_lora.up.weight"] = randn(out, r, std=0.2)
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=FIXTURES / "ip-adapter")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    batch, images = 2, 2
    inputs = {
        "sample": torch.randn(batch, 4, 16, 16),
        "timestep": torch.tensor([500.0]),
        "context": torch.randn(batch, 7, 8),
        "plain.image_embeds": torch.randn(batch, images, 16),
        "faceid.id_embeds": torch.nn.functional.normalize(torch.randn(batch, images, 16), dim=-1),
        "plus.hidden_states": torch.randn(batch, 1, 5, 16),
        "full_face.hidden_states": torch.randn(batch, 1, 5, 16),
        "faceid_plus_v2.id_embeds": torch.nn.functional.normalize(torch.randn(batch, 1, 16), dim=-1),
        "faceid_plus_v2.hidden_states": torch.randn(batch, 1, 5, 16),
    }
    scales = {"plain": 0.7, "plus": 0.6, "full_face": 0.8, "faceid": 0.9, "faceid_plus_v2": 1.0}
    outputs = {}
    for kind, scale in scales.items():
        pipe = StableDiffusionPipeline.from_pretrained(FIXTURES / "tiny-sd", torch_dtype=torch.float32)
        unet = pipe.unet
        cross = unet.config.cross_attention_dim
        sd = {f"image_proj.{k}": v for k, v in image_proj(kind, cross).items()}
        sd.update({f"ip_adapter.{k}": v for k, v in ip_layers(unet, kind, cross).items()})
        name = f"{kind}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, args.out / name)
        pipe.load_ip_adapter(str(args.out), subfolder="", weight_name=name, image_encoder_folder=None)
        pipe.set_ip_adapter_scale(scale)
        proj = unet.encoder_hid_proj.image_projection_layers[0]
        if kind == "faceid_plus_v2":
            proj.clip_embeds = inputs["faceid_plus_v2.hidden_states"]
            proj.shortcut = True
            embeds = inputs["faceid_plus_v2.id_embeds"]
        elif kind == "faceid":
            embeds = inputs["faceid.id_embeds"]
        elif kind == "plain":
            embeds = inputs["plain.image_embeds"]
        else:
            embeds = inputs[f"{kind}.hidden_states"]
        with torch.no_grad():
            out = unet(
                inputs["sample"],
                inputs["timestep"],
                encoder_hidden_states=inputs["context"],
                added_cond_kwargs={"image_embeds": [embeds]},
            ).sample
            outputs[f"{kind}.out"] = out
            # The base UNet on the same inputs, to show the adapter changes the output.
            if kind == "plain":
                pipe.unload_ip_adapter()
                outputs["base.out"] = unet(
                    inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["context"]
                ).sample
        print(f"{kind}: {type(proj).__name__}, |out| {out.abs().max():.4f}")
        if kind == "faceid":
            # A whole guided DDIM loop with FaceID (two references, LoRA on) from fixed noise,
            # as `idforge generate --adapter … --id-embeds … --noise …` runs it.
            pipe.set_ip_adapter_scale(LOOP["scale"])
            ids = torch.nn.functional.normalize(torch.randn(1, 2, 16), dim=-1)
            noise = torch.randn(1, 4, 32, 32)
            with torch.no_grad():
                image = pipe(
                    LOOP["prompt"],
                    negative_prompt="",
                    height=64,
                    width=64,
                    num_inference_steps=LOOP["steps"],
                    guidance_scale=LOOP["guidance"],
                    latents=noise.clone(),
                    ip_adapter_image_embeds=[torch.cat([torch.zeros_like(ids), ids])],
                    output_type="pt",
                ).images
            save_file(
                {"id_embeds": ids[0].contiguous(), "noise": noise, "image": image.float().contiguous()},
                args.out / "loop_faceid.safetensors",
            )

    # SDXL: plain and FaceID on the tiny SDXL UNet (two transformer blocks per attention module
    # in its second level, so the attn_processors numbering is exercised), with SDXL's added
    # conditions.
    from diffusers import StableDiffusionXLPipeline

    xl = {
        "sdxl.sample": torch.randn(batch, 4, 16, 16),
        "sdxl.context": torch.randn(batch, 7, 64),
        "sdxl.text_embeds": torch.randn(batch, 32),
        "sdxl.time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch),
        "sdxl.plain.image_embeds": torch.randn(batch, 1, 16),
        "sdxl.faceid.id_embeds": torch.nn.functional.normalize(torch.randn(batch, 1, 16), dim=-1),
    }
    inputs.update(xl)
    for kind in ["plain", "faceid"]:
        pipe = StableDiffusionXLPipeline.from_pretrained(FIXTURES / "tiny-sdxl", torch_dtype=torch.float32)
        unet = pipe.unet
        cross = unet.config.cross_attention_dim
        sd = {f"image_proj.{k}": v for k, v in image_proj(kind, cross).items()}
        sd.update({f"ip_adapter.{k}": v for k, v in ip_layers(unet, kind, cross).items()})
        name = f"sdxl_{kind}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, args.out / name)
        pipe.load_ip_adapter(str(args.out), subfolder="", weight_name=name, image_encoder_folder=None)
        pipe.set_ip_adapter_scale(scales[kind])
        embeds = xl["sdxl.plain.image_embeds"] if kind == "plain" else xl["sdxl.faceid.id_embeds"]
        added = {"text_embeds": xl["sdxl.text_embeds"], "time_ids": xl["sdxl.time_ids"]}
        with torch.no_grad():
            outputs[f"sdxl.{kind}.out"] = unet(
                xl["sdxl.sample"], inputs["timestep"], encoder_hidden_states=xl["sdxl.context"],
                added_cond_kwargs={**added, "image_embeds": [embeds]},
            ).sample
            if kind == "plain":
                pipe.unload_ip_adapter()
                outputs["sdxl.base.out"] = unet(
                    xl["sdxl.sample"], inputs["timestep"], encoder_hidden_states=xl["sdxl.context"],
                    added_cond_kwargs=added,
                ).sample
        print(f"sdxl {kind}: |out| {outputs[f'sdxl.{kind}.out'].abs().max():.4f}")

    tensors = {k: v.float().contiguous() for k, v in {**inputs, **outputs}.items()}
    save_file(tensors, args.out / "parity.safetensors")
    meta = {
        "scales": scales,
        "batch": batch,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
        "loop_faceid": {**LOOP, "sampler": "ddim", "height": 64, "width": 64, "negative_prompt": "",
                        "file": "loop_faceid.safetensors (id_embeds [2, 16], noise, image in [0, 1])"},
        "notes": "image embeds are [batch, images, ...]: several images per row are concatenated "
        "into one token sequence by diffusers' IPAdapterAttnProcessor2_0.",
    }
    (args.out / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
