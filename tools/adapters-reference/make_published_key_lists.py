#!/usr/bin/env python3
"""Key/shape lists of the published IP-Adapter files, made from the reference modules at full size.

For each published checkpoint idforge's loaders must accept -- ip-adapter_sd15,
ip-adapter-plus_sd15, ip-adapter-faceid_sd15, ip-adapter-faceid-plusv2_sd15, ip-adapter_sdxl --
this script builds the modules whose state dicts those files are, exactly as
tencent-ailab/IP-Adapter's classes build them for loading (`IPAdapter.init_proj` /
`set_ip_adapter`, `IPAdapterPlus`, `IPAdapterFaceID`, `IPAdapterFaceIDPlus`, `IPAdapterXL`):

  image_proj   ImageProjModel / Resampler / MLPProjModel (FaceID) / ProjPlusModel with
               FacePerceiverResampler, at the published sizes (CLIP ViT-H: projection 1024,
               hidden 1280; bigG: projection 1280; ArcFace 512);
  ip_adapter   `ModuleList(unet.attn_processors.values())` of diffusers' UNet2DConditionModel at
               the full SD1.5 / SDXL configs, with IPAttnProcessor2_0 on attn2 and the parameter-free
               AttnProcessor2_0 on attn1 -- or, for FaceID, LoRAAttnProcessor / LoRAIPAttnProcessor
               of rank 128 (`{i}.to_{q,k,v,out}_lora.{down,up}.weight` on every processor, as the
               published FaceID files spell them)

-- all inside `accelerate.init_empty_weights()`, so nothing is allocated (the UNet's parameters
are on the meta device; only names and shapes are read), and writes one small JSON per file:

  diffusion/tests/fixtures/published-layouts/<name>.json
    {"file", "unet" (sd15 | sdxl), "kind" (idforge's name), "tensors": {key: shape}}

with the keys in the checkpoints' flat `{image_proj, ip_adapter}` layout (`image_proj.…`,
`ip_adapter.{i}.…`). diffusion/tests/published_layouts.rs checks idforge's detection and expected
names/shapes against them.

The reference classes are imported from an IP-Adapter checkout given by --ip-adapter-src; get
one without the network from the mirror:
  mkdir -p /tmp/ipa && git -C /work/.mirror/tencent-ailab+IP-Adapter/repo archive HEAD ip_adapter | tar -x -C /tmp/ipa
(or `git clone https://github.com/tencent-ailab/IP-Adapter`), then run
  tools/adapters-reference/run make_published_key_lists.py --ip-adapter-src /tmp/ipa
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "diffusion/tests/fixtures/published-layouts"

# diffusers' unet/config.json of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-xl-base-1.0 (the keys that differ from UNet2DConditionModel's
# defaults), as idforge's UNetConfig::sd15() / sdxl().
UNETS = {
    "sd15": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "sdxl": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        layers_per_block=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}


def published(ipa):
    """name → (unet, idforge kind, processors, image_proj builder), as the reference classes
    build them for the published files."""
    from ip_adapter.ip_adapter import ImageProjModel
    from ip_adapter.ip_adapter_faceid import MLPProjModel as FaceIdMLPProjModel
    from ip_adapter.ip_adapter_faceid import ProjPlusModel
    from ip_adapter.resampler import Resampler

    return {
        # IPAdapter: CLIP ViT-H/14 image_embeds (projection_dim 1024), 4 tokens.
        "ip-adapter_sd15": ("sd15", "ip-adapter", "ip", 4,
                            lambda cross: ImageProjModel(cross_attention_dim=cross, clip_embeddings_dim=1024,
                                                         clip_extra_context_tokens=4)),
        # IPAdapterPlus: ViT-H hidden states (1280), 16 queries, heads 12.
        "ip-adapter-plus_sd15": ("sd15", "ip-adapter-plus", "ip", 16,
                                 lambda cross: Resampler(dim=cross, depth=4, dim_head=64, heads=12, num_queries=16,
                                                         embedding_dim=1280, output_dim=cross, ff_mult=4)),
        # IPAdapterFaceID: ArcFace 512, 4 tokens, LoRA rank 128.
        "ip-adapter-faceid_sd15": ("sd15", "ip-adapter-faceid", "faceid", 4,
                                   lambda cross: FaceIdMLPProjModel(cross_attention_dim=cross, id_embeddings_dim=512,
                                                                    num_tokens=4)),
        # IPAdapterFaceIDPlus (V2 differs only by the shortcut at run time): ArcFace + ViT-H
        # hidden states of the face crop, LoRA rank 128.
        "ip-adapter-faceid-plusv2_sd15": ("sd15", "ip-adapter-faceid-plus", "faceid", 4,
                                          lambda cross: ProjPlusModel(cross_attention_dim=cross, id_embeddings_dim=512,
                                                                      clip_embeddings_dim=1280, num_tokens=4)),
        # IPAdapterXL: OpenCLIP bigG image_embeds (projection_dim 1280), 4 tokens.
        "ip-adapter_sdxl": ("sdxl", "ip-adapter", "ip", 4,
                            lambda cross: ImageProjModel(cross_attention_dim=cross, clip_embeddings_dim=1280,
                                                         clip_extra_context_tokens=4)),
    }


def processors(unet, kind, num_tokens):
    """The reference's `set_ip_adapter` loop (hidden size from block_out_channels)."""
    from ip_adapter.attention_processor import AttnProcessor2_0, IPAttnProcessor2_0
    from ip_adapter.attention_processor_faceid import LoRAAttnProcessor, LoRAIPAttnProcessor

    procs = {}
    config = unet.config
    for name in unet.attn_processors.keys():
        cross = None if name.endswith("attn1.processor") else config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = config.block_out_channels[int(name[len("down_blocks.")])]
        if kind == "faceid":
            procs[name] = (
                LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=128)
                if cross is None
                else LoRAIPAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0, rank=128,
                                         num_tokens=num_tokens)
            )
        else:
            procs[name] = (
                AttnProcessor2_0()
                if cross is None
                else IPAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=cross, scale=1.0,
                                        num_tokens=num_tokens)
            )
    return torch.nn.ModuleList(procs.values())


def shapes(module, prefix):
    return {f"{prefix}{k}": list(v.shape) for k, v in module.state_dict().items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ip-adapter-src", type=Path, required=True,
                    help="a tencent-ailab/IP-Adapter checkout (the folder holding ip_adapter/)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (args.ip_adapter_src / "ip_adapter/resampler.py").is_file():
        raise SystemExit(f"{args.ip_adapter_src}/ip_adapter/resampler.py not found: give an IP-Adapter checkout")
    sys.path.insert(0, str(args.ip_adapter_src))
    args.out.mkdir(parents=True, exist_ok=True)

    import accelerate
    import diffusers
    from diffusers import UNet2DConditionModel

    unets = {}
    with accelerate.init_empty_weights():
        for key, config in UNETS.items():
            unets[key] = UNet2DConditionModel(**config)
        for name, (unet_key, kind, procs, tokens, build) in published(args.ip_adapter_src).items():
            unet = unets[unet_key]
            assert all(p.is_meta for p in unet.parameters()), "the UNet must not be allocated"
            image_proj = build(unet.config.cross_attention_dim)
            ip_layers = processors(unet, procs, tokens)
            tensors = {**shapes(image_proj, "image_proj."), **shapes(ip_layers, "ip_adapter.")}
            assert all(p.is_meta for p in [*image_proj.parameters(), *ip_layers.parameters()])
            meta = {
                "file": f"{name}.bin",
                "unet": unet_key,
                "kind": kind,
                "made_by": "tools/adapters-reference/make_published_key_lists.py",
                "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
            }
            # One tensor a line, sorted, so that a diff of two versions reads.
            rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(tensors.items()))
            head = json.dumps(meta, indent=1)[:-2]
            (args.out / f"{name}.json").write_text(f'{head},\n "tensors": {{\n{rows}\n }}\n}}\n')
            print(f"{name}: {len(tensors)} tensors, {unet_key}, {len(unet.attn_processors)} processors")


if __name__ == "__main__":
    main()
