#!/usr/bin/env python3
"""Split-prompt adapter parity fixtures for idforge-diffusion (diffusion/src/adapters/split_prompt.rs).

matosjan/persongen's `ipmakerbgbody` model puts `myIPAttnProcessorTwoConds2_0` on every
cross-attention layer: the context is `cat([main(77), background(77), body(77)])`, and each layer
adds `scale * SDPA(q, to_k_ip_bg(bg), to_v_ip_bg(bg)) + scale * SDPA(q, to_k_ip_body(body), ...)`
to the main attention before `to_out`. This script imports that processor from a persongen
checkout (by file path: the package's `src/model/__init__.py` imports every model and their
dependencies), installs it on the tiny SDXL UNet of diffusion/tests/fixtures/tiny-sdxl with
random background/body weights, and records:

  - the UNet output for fixed inputs (main 77 + bg 77 + body 77 tokens, batch 2) with separate
    scales s_bg = 0.6, s_body = 1.3. persongen's processor has one `scale` for both parts; since
    `s * SDPA(q, k, v) = SDPA(q, k, s * v)`, the reference runs with `scale = 1` and
    `to_v_ip_bg` / `to_v_ip_body` multiplied by s_bg / s_body, while the adapter file holds the
    unscaled weights (idforge applies the scales);
  - the same with persongen's own scale 1 for both parts, and the plain UNet on the main tokens;
  - one guided 10-step Euler loop (the tiny pipeline's scheduler, 64 px, guidance 5) through
    diffusers' StableDiffusionXLPipeline with the processor installed, its prompts encoded as
    persongen's `IPMakerBGBodyStableDiffusionXLPipeline.__call__` does: the main prompt with the
    negative prompt, the background and body prompts each with `negative_prompt=None` (so their
    unconditional rows are zeros: SDXL's `force_zeros_for_empty_prompt`), concatenated to 231
    tokens for both branches; the image, the noise and the encodings are saved.

Writes diffusion/tests/fixtures/split-prompt/:
  adapter.safetensors      the adapter in idforge's layout: `split_prompt.{i}.to_{k,v}_ip_{bg,body}.weight`,
                           i the attn_processors index (persongen's `adapter_modules` state dict)
  persongen_state.pth      `{"adapter_modules": state_dict}` as persongen's `get_state_dict()`
                           returns it (torch pickle): the same weights under `adapter_modules.`
  parity.safetensors       inputs and outputs, float32
  parity.json              scales, prompts, shapes, versions

Get a persongen checkout without the network from the mirror:
  mkdir -p /tmp/pg && git -C /work/.mirror/matosjan+persongen/repo archive HEAD | tar -x -C /tmp/pg
(or `git clone https://github.com/matosjan/persongen`), then run
  tools/adapters-reference/run make_split_prompt_fixtures.py --persongen-src /tmp/pg
"""
import argparse
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "diffusion/tests/fixtures"
SCALES = {"background": 0.6, "body": 1.3}
LOOP = {
    "prompt": "a photo of a man",
    "background": "a sunny beach with palm trees",
    "body": "wearing a red jacket",
    "negative_prompt": "lowres, blurry",
    "steps": 10,
    "guidance": 5.0,
    "height": 64,
    "width": 64,
}


def load_processor(src: Path):
    path = src / "src/model/attn_procs/attn_processor.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --persongen-src must be a persongen checkout")
    spec = importlib.util.spec_from_file_location("persongen_attn_processor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.myIPAttnProcessorTwoConds2_0


def hidden_size(unet, name):
    blocks = unet.config.block_out_channels
    if name.startswith("mid_block"):
        return blocks[-1]
    if name.startswith("up_blocks"):
        return list(reversed(blocks))[int(name[len("up_blocks.")])]
    return blocks[int(name[len("down_blocks.")])]


def install(unet, processor_cls, weights, scale_v=None):
    """persongen's `set_ip_adapter`: AttnProcessor2_0 on attn1, the two-conditions processor on
    attn2 (num_tokens 77), loaded from `weights` (keys `{i}.to_k_ip_bg.weight`, ...). With
    `scale_v`, the value projections are multiplied by the part's scale (see the docstring)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = {}
    cross = unet.config.cross_attention_dim
    for i, name in enumerate(unet.attn_processors.keys()):
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        p = processor_cls(hidden_size=hidden_size(unet, name), cross_attention_dim=cross, scale=1.0, num_tokens=77)
        sd = {k[len(f"{i}."):]: v.clone() for k, v in weights.items() if k.startswith(f"{i}.")}
        if scale_v is not None:
            sd["to_v_ip_bg.weight"] *= scale_v["background"]
            sd["to_v_ip_body.weight"] *= scale_v["body"]
        p.load_state_dict(sd, strict=True)
        procs[name] = p
    unet.set_attn_processor(procs)


def random_weights(unet, processor_cls):
    """Random bg/body projections (not copies of to_k/to_v, so that a swapped part shows), keyed
    as persongen's `adapter_modules = ModuleList(unet.attn_processors.values())` state dict."""
    cross = unet.config.cross_attention_dim
    procs = []
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            procs.append(torch.nn.Identity())  # parameter-free, as AttnProcessor2_0
            continue
        p = processor_cls(hidden_size=hidden_size(unet, name), cross_attention_dim=cross, num_tokens=77)
        for lin in [p.to_k_ip_bg, p.to_v_ip_bg, p.to_k_ip_body, p.to_v_ip_body]:
            torch.nn.init.normal_(lin.weight, std=cross ** -0.5 * 2.0)
        procs.append(p)
    return {k: v.detach().clone() for k, v in torch.nn.ModuleList(procs).state_dict().items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--persongen-src", type=Path, required=True, help="a matosjan/persongen checkout")
    ap.add_argument("--out", type=Path, default=FIXTURES / "split-prompt")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers
    from diffusers import StableDiffusionXLPipeline

    processor_cls = load_processor(args.persongen_src)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    pipe = StableDiffusionXLPipeline.from_pretrained(FIXTURES / "tiny-sdxl", torch_dtype=torch.float32)
    unet = pipe.unet
    cross = unet.config.cross_attention_dim
    weights = random_weights(unet, processor_cls)
    save_file({f"split_prompt.{k}": v.contiguous() for k, v in weights.items()}, args.out / "adapter.safetensors")
    torch.save({"adapter_modules": weights}, args.out / "persongen_state.pth")

    batch = 2
    inputs = {
        "sample": torch.randn(batch, 4, 16, 16),
        "timestep": torch.tensor([500.0]),
        "main": torch.randn(batch, 77, cross),
        "background": torch.randn(batch, 77, cross),
        "body": torch.randn(batch, 77, cross),
        "text_embeds": torch.randn(batch, 32),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch),
    }
    added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
    context = torch.cat([inputs["main"], inputs["background"], inputs["body"]], dim=1)
    outputs = {}
    with torch.no_grad():
        outputs["base.out"] = unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["main"],
                                   added_cond_kwargs=added).sample
        install(unet, processor_cls, weights, scale_v=SCALES)
        outputs["scaled.out"] = unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=context,
                                     added_cond_kwargs=added).sample
        install(unet, processor_cls, weights)
        outputs["unit.out"] = unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=context,
                                   added_cond_kwargs=added).sample
    for k, v in outputs.items():
        print(f"{k}: |out| {v.abs().max():.4f}")

    # The guided loop, persongen's scale 1 (the processor as installed last).
    with torch.no_grad():
        pe, npe, ppe, nppe = pipe.encode_prompt(
            prompt=LOOP["prompt"], negative_prompt=LOOP["negative_prompt"], do_classifier_free_guidance=True
        )
        bg, ubg, _, _ = pipe.encode_prompt(prompt=LOOP["background"], negative_prompt=None,
                                           do_classifier_free_guidance=True)
        body, ubody, _, _ = pipe.encode_prompt(prompt=LOOP["body"], negative_prompt=None,
                                               do_classifier_free_guidance=True)
        assert ubg.abs().max() == 0 and ubody.abs().max() == 0, "SDXL's uncond parts are zeros"
        noise = torch.randn(1, 4, LOOP["height"] // 2, LOOP["width"] // 2)
        image = pipe(
            prompt_embeds=torch.cat([pe, bg, body], dim=1),
            negative_prompt_embeds=torch.cat([npe, ubg, ubody], dim=1),
            pooled_prompt_embeds=ppe,
            negative_pooled_prompt_embeds=nppe,
            height=LOOP["height"],
            width=LOOP["width"],
            num_inference_steps=LOOP["steps"],
            guidance_scale=LOOP["guidance"],
            latents=noise.clone(),
            output_type="pt",
        ).images
    loop = {
        "loop.noise": noise,
        "loop.image": image,
        "loop.main": pe,
        "loop.negative": npe,
        "loop.background": bg,
        "loop.body": body,
    }
    print(f"loop image: {tuple(image.shape)}, mean {image.mean():.4f}")

    tensors = {k: v.float().contiguous() for k, v in {**inputs, **outputs, **loop}.items()}
    save_file(tensors, args.out / "parity.safetensors")
    meta = {
        "scales": SCALES,
        "batch": batch,
        "loop": {**LOOP, "sampler": "euler", "scale": 1.0, "time_ids": [64, 64, 0, 0, 64, 64]},
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
        "processor": "persongen src/model/attn_procs/attn_processor.py myIPAttnProcessorTwoConds2_0",
        "outputs": {
            "scaled.out": "s_bg 0.6, s_body 1.3 (folded into to_v_ip_*)",
            "unit.out": "persongen's scale 1",
            "base.out": "the plain UNet on the main tokens",
        },
    }
    (args.out / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
