#!/usr/bin/env python3
"""One PhotoMaker v1 training step in PyTorch, for train/tests/photomaker_step.rs.

Built from TencentARC/PhotoMaker's own classes, imported at run time from a checkout given with
--photomaker-src (see tools/adapters-reference/make_photomaker_fixtures.py for how to get one;
its helpers are imported from there): the tiny v1 ID encoder and UNet LoRA of
diffusion/tests/fixtures/photomaker/photomaker-v1.bin loaded by the repo's
`load_photomaker_adapter` on the tiny SDXL pipeline (v1 as released: one class token per
reference). Trained as persongen's PhotoMaker baseline: the UNet LoRA (PEFT's lora_A / lora_B
after loading), `visual_projection`, `visual_projection_2`, `fuse_module`; CLIP's vision backbone
and the UNet frozen. One step:

    prompt_embeds, pooled, mask = encode_prompt_with_trigger_word("a photo of a man img", 1 ref)
    fused = id_encoder(pixels, prompt_embeds, mask)
    noisy = DDPMScheduler.add_noise(latents, noise, t)
    loss  = mse(unet(noisy, t, fused, {text_embeds: pooled, time_ids}), noise)
    clip_grad_norm_(1.0); torch AdamW, groups {LoRA: 1e-4, ID encoder: 1e-5} (persongen's)

Writes train/tests/fixtures/photomaker_step.safetensors: in.* (latents, noise, pixels, context,
pooled, time_ids), fused (the ID encoder's output), grad.<key> (before clipping), after.<key>
with the PhotoMaker file's keys; and
photomaker_step.json (loss, grad norm, timestep, class tokens, lrs).

Run with the venv of tools/diffusers-reference (seconds, offline):
    HF_HUB_OFFLINE=1 $IDFORGE_CACHE/venv-diffusers-reference/bin/python \
        tools/train-reference/make_photomaker_step_fixture.py --photomaker-src DIR
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "diffusion/tests/fixtures"
sys.path.insert(0, str(ROOT / "tools/adapters-reference"))
import make_photomaker_fixtures as pmf  # noqa: E402

LORA_LR, ENCODER_LR, MAX_NORM, TIMESTEP = 1e-4, 1e-5, 1.0, 500  # persongen's rates


def our_key(name):
    """The PhotoMaker-file key of a trained torch parameter (None: not trained)."""
    if name.startswith("id_encoder."):
        rest = name[len("id_encoder."):]
        if rest.startswith(("visual_projection", "fuse_module.")):
            return name
        return None
    for short, mod in [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("out", "to_out.0")]:
        for part, which in [("lora_A", "down"), ("lora_B", "up")]:
            tail = f".{mod}.{part}.photomaker.weight"
            if name.startswith("unet.") and name.endswith(tail):
                attn = name[len("unet."):-len(tail)]
                return f"lora_weights.unet.{attn}.processor.to_{short}_lora.{which}.weight"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photomaker-src", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "train/tests/fixtures")
    args = ap.parse_args()
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, model_v2, pipeline = pmf.import_photomaker(args.photomaker_src)
    tiny = FIXTURES / "tiny-sdxl"
    Pipe = pipeline.PhotoMakerStableDiffusionXLPipeline
    pipe = Pipe.from_pretrained(tiny, torch_dtype=torch.float32)
    widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    TinyV1, TinyV2 = pmf.tiny_classes(model, model_v2, widths)
    pipeline.PhotoMakerIDEncoder = TinyV1
    pipe.load_photomaker_adapter(str(FIXTURES / "photomaker"), weight_name="photomaker-v1.bin",
                                 subfolder="", trigger_word="img", pm_version="v1")
    pipe.num_tokens = 1
    enc, unet = pipe.id_encoder.float(), pipe.unet
    pixels = load_file(FIXTURES / "photomaker/parity.safetensors")["pixels"][:1]

    with torch.no_grad():
        pe, _, pooled, _, mask = pipe.encode_prompt_with_trigger_word(
            prompt=pmf.PROMPT, device="cpu", num_id_images=1, do_classifier_free_guidance=False)
    named = {f"id_encoder.{n}": p for n, p in enc.named_parameters()}
    named.update({f"unet.{n}": p for n, p in unet.named_parameters()})
    trained = {}
    for n, p in named.items():
        k = our_key(n)
        p.requires_grad_(k is not None)
        if k is not None:
            trained[k] = p
    assert any(k.startswith("lora_weights.") for k in trained), "no LoRA parameter found"
    keys = sorted(trained)
    groups = [{"params": [trained[k] for k in keys if k.startswith("lora_weights.")], "lr": LORA_LR},
              {"params": [trained[k] for k in keys if k.startswith("id_encoder.")], "lr": ENCODER_LR}]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([TIMESTEP])
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])

    fused = enc(pixels.unsqueeze(0), pe.clone(), mask)  # the fuse writes into its input
    noisy = sched.add_noise(latents, noise, t)
    pred = unet(noisy, t, fused, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
    loss.backward()
    out = {"in.latents": latents, "in.noise": noise, "in.pixels": pixels, "in.context": pe,
           "in.pooled": pooled, "in.time_ids": time_ids, "fused": fused.detach().clone()}
    for k in keys:
        out[f"grad.{k}"] = trained[k].grad.detach().clone()
    norm = torch.nn.utils.clip_grad_norm_([trained[k] for k in keys], MAX_NORM)
    opt.step()
    for k in keys:
        out[f"after.{k}"] = trained[k].detach().clone()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in out.items()}, args.out / "photomaker_step.safetensors")
    meta = {"loss": loss.item(), "grad_norm": norm.item(), "timestep": TIMESTEP,
            "class_tokens": mask[0].nonzero()[:, 0].tolist(), "lora_lr": LORA_LR,
            "encoder_lr": ENCODER_LR, "max_grad_norm": MAX_NORM, "trained": len(keys)}
    (args.out / "photomaker_step.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


if __name__ == "__main__":
    main()
