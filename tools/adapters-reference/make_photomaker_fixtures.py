#!/usr/bin/env python3
"""PhotoMaker v1 / v2 parity fixtures for idforge-diffusion (diffusion/src/adapters/photomaker/).

Everything comes from TencentARC/PhotoMaker's own code, imported at run time from a checkout given
with --photomaker-src (nothing of it is copied here). Get one with

    git clone https://github.com/TencentARC/PhotoMaker /tmp/pm        # or, from a bare mirror:
    git -C <mirror> archive HEAD | tar -x -C /tmp/pm

Only `photomaker/{model,model_v2,resampler,pipeline}.py` are imported (the package's __init__
also pulls in insightface, which the reference does not need here).

What it does:
- builds tiny random-weight ID encoders from the repo's classes: `PhotoMakerIDEncoder` (v1) and
  `PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken` (v2), subclassed only to replace their
  hard-coded widths (CLIP ViT-L/14, 1024 → 768 / 1280, FuseModule(2048), QFormerPerceiver(512,
  2048)) by ones that fit the tiny SDXL pipeline of diffusion/tests/fixtures/tiny-sdxl (text
  widths 32 + 32 = 64). The perceiver's `dim_head=128, heads=cross // 128` would give 0 heads at
  width 64, so its resampler is built with dim_head 32 (2 heads) and depth 2; idforge takes the
  head width as an option (128 by default) and counts the depth from the keys;
- draws a tiny UNet LoRA (rank 2 on to_q / to_k / to_v / to_out of every attention layer) in the
  spelling of the published `lora_weights`: `unet.<attn processor>.to_{q,k,v,out}_lora.{down,up}
  .weight`, e.g. `unet.down_blocks.2.attentions.0.transformer_blocks.2.attn1.processor.to_k_lora
  .down.weight` (the key list of photomaker-v*.bin printed by a failed load in
  https://github.com/shiimizu/ComfyUI-PhotoMaker-Plus/issues/19);
- saves v1 as a torch pickle `{"id_encoder", "lora_weights"}` (photomaker-v1.bin) and v2 as the
  safetensors variant (`id_encoder.` / `lora_weights.` prefixes), the two layouts
  `load_photomaker_adapter` reads; the ID encoders' tensors are float16 (values drawn in float32
  and rounded, so both sides compute with the same numbers; the fixtures stay small), the LoRA
  float32;
- loads each with the repo's `PhotoMakerStableDiffusionXLPipeline.load_photomaker_adapter` on the
  tiny SDXL pipeline and records: the ID encoder's outputs (v1: cat(visual_projection,
  visual_projection_2) of the pooled CLS; v2: the QFormerPerceiver tokens), the prompt
  embeddings of `encode_prompt_with_trigger_word` for "a photo of a man img" with 1 and 2
  references (ids, class_tokens_mask, embeddings before and after the fuse, pooled), and a whole
  guided Euler loop (4 steps, start_merge_step 1) from fixed noise with two references, the
  UNet's conditioning at the first and last step and the decoded image.

Quirks reproduced and noted in the JSON:
- git HEAD's `load_photomaker_adapter` sets `num_tokens = 2` for both versions; with v1 that makes
  2·N class tokens for N ID embeddings and the fuse fails. v1 as released (commit 1e78aa6)
  repeats the class token N times: the v1 fixture sets `pipe.num_tokens = 1` after loading.
- `id_image_processor` is `CLIPImageProcessor()` (224 px); the tiny vision tower takes 32 px, so
  the fixture's processor crops to 32 (`size={"shortest_edge": 32}, crop_size=32`) and the
  reference images are 32×32 already (no resampling). The preprocessed pixels are recorded.

Also writes the full-size key lists (every `id_encoder.*` name and shape of v1 and v2, built on
the meta device, nothing allocated): diffusion/tests/fixtures/photomaker/full_keys.json.

Run with tools/adapters-reference/run-photomaker --photomaker-src DIR.
"""
import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "diffusion/tests/fixtures"
PROMPT = "a photo of a man img"
LOOP = {"prompt": "a photo of a man img wearing a red hat", "steps": 4, "guidance": 5.0,
        "start_merge_step": 1, "height": 64, "width": 64, "references": 2}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2,
               "num_hidden_layers": 2, "patch_size": 8, "image_size": 32, "projection_dim": 32}
VISION_HEAD_DIM = TINY_VISION["hidden_size"] // TINY_VISION["num_attention_heads"]
PERCEIVER_HEAD_DIM, PERCEIVER_DEPTH, ID_DIM = 32, 2, 16


def import_photomaker(src: Path):
    """photomaker.{model, model_v2, pipeline} without the package __init__ (insightface)."""
    pkg = types.ModuleType("photomaker")
    pkg.__path__ = [str(src / "photomaker")]
    sys.modules["photomaker"] = pkg
    import importlib

    model = importlib.import_module("photomaker.model")
    model_v2 = importlib.import_module("photomaker.model_v2")
    pkg.PhotoMakerIDEncoder = model.PhotoMakerIDEncoder
    pkg.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken = (
        model_v2.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken)
    pipeline = importlib.import_module("photomaker.pipeline")
    # diffusers 0.38's _get_model_file no longer takes `resume_download`, which the repo's
    # load_photomaker_adapter passes; drop it so that the repo's own file reading runs.
    get_model_file = pipeline._get_model_file

    def _get_model_file(*a, **kw):
        kw.pop("resume_download", None)
        return get_model_file(*a, **kw)

    pipeline._get_model_file = _get_model_file
    return model, model_v2, pipeline


def tiny_classes(model, model_v2, text_widths):
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    w1, w2 = text_widths
    cross = w1 + w2
    assert TINY_VISION["projection_dim"] == w1

    class TinyV1(model.PhotoMakerIDEncoder):
        # model.py's __init__ with the widths of the tiny pipeline; forward is the repo's.
        def __init__(self):
            CLIPVisionModelWithProjection.__init__(self, CLIPVisionConfig(**TINY_VISION))
            self.visual_projection_2 = nn.Linear(TINY_VISION["hidden_size"], w2, bias=False)
            self.fuse_module = model.FuseModule(cross)

    resampler = model_v2.FacePerceiverResampler

    def tiny_resampler(**kw):
        kw.update(dim_head=PERCEIVER_HEAD_DIM, heads=kw["dim"] // PERCEIVER_HEAD_DIM,
                  depth=PERCEIVER_DEPTH)
        return resampler(**kw)

    model_v2.FacePerceiverResampler = tiny_resampler

    class TinyV2(model_v2.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken):
        def __init__(self, id_embeddings_dim=ID_DIM):
            CLIPVisionModelWithProjection.__init__(self, CLIPVisionConfig(**TINY_VISION))
            self.fuse_module = model_v2.FuseModule(cross)
            self.visual_projection_2 = nn.Linear(TINY_VISION["hidden_size"], w2, bias=False)
            self.num_tokens = 2
            self.cross_attention_dim = cross
            self.qformer_perceiver = model_v2.QFormerPerceiver(
                id_embeddings_dim, cross, self.num_tokens,
                embedding_dim=TINY_VISION["hidden_size"])

    return TinyV1, TinyV2


def randomize(module, seed):
    """Every parameter redrawn (LayerNorms near identity, the rest ~ 1/sqrt(fan_in)), then
    rounded to float16 so that the saved half-precision file holds exactly these values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in module.state_dict().items():
        if not p.is_floating_point():
            sd[name] = p
            continue
        if "norm" in name or "layrnorm" in name or "layer_norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            v = base + 0.1 * torch.randn(p.shape, generator=g)
        elif p.dim() >= 2:
            fan_in = int(np.prod(p.shape[1:]))
            v = torch.randn(p.shape, generator=g) / fan_in ** 0.5
        else:
            v = 0.1 * torch.randn(p.shape, generator=g)
        sd[name] = v.half().float()
    module.load_state_dict(sd)
    return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}


def tiny_lora(unet, seed, rank=2):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in unet.attn_processors.keys():
        module = unet.get_submodule(name[: -len(".processor")])
        for p, lin in [("q", module.to_q), ("k", module.to_k), ("v", module.to_v),
                       ("out", module.to_out[0])]:
            sd[f"unet.{name}.to_{p}_lora.down.weight"] = (
                torch.randn(rank, lin.in_features, generator=g) / lin.in_features ** 0.5)
            sd[f"unet.{name}.to_{p}_lora.up.weight"] = (
                0.5 * torch.randn(lin.out_features, rank, generator=g) / rank ** 0.5)
    return sd


def reference_images(n, seed):
    """Smooth random 32×32 RGB images (upsampled noise), so the PNGs stay small."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        small = torch.rand(1, 3, 4, 4, generator=g)
        big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear",
                                              align_corners=False)
        arr = (big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append(Image.fromarray(arr))
    return out


def full_key_lists(model, model_v2):
    """Names and shapes of the published encoders' state dicts, on the meta device."""
    out = {}
    with torch.device("meta"):
        for version, cls in [("v1", model.PhotoMakerIDEncoder),
                             ("v2", model_v2.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken)]:
            enc = cls()
            out[version] = [[f"id_encoder.{k}", list(v.shape)] for k, v in enc.state_dict().items()]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photomaker-src", type=Path, required=True,
                    help="a checkout of TencentARC/PhotoMaker (its photomaker/ folder is imported)")
    ap.add_argument("--out", type=Path, default=FIXTURES / "photomaker")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers
    import transformers
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, model_v2, pipeline = import_photomaker(args.photomaker_src)
    # Full-size key lists first, with the repo's own classes untouched.
    keys = full_key_lists(model, model_v2)
    (args.out / "full_keys.json").write_text(json.dumps(
        {"source": "TencentARC/PhotoMaker photomaker/model.py, model_v2.py (meta device)", **keys},
        separators=(",", ":")) + "\n")

    tiny = FIXTURES / "tiny-sdxl"
    Pipe = pipeline.PhotoMakerStableDiffusionXLPipeline
    probe = Pipe.from_pretrained(tiny, torch_dtype=torch.float32)
    widths = (probe.text_encoder.config.hidden_size, probe.text_encoder_2.config.hidden_size)
    TinyV1, TinyV2 = tiny_classes(model, model_v2, widths)
    # load_photomaker_adapter builds the encoder from these names.
    pipeline.PhotoMakerIDEncoder = TinyV1
    pipeline.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken = TinyV2
    processor = CLIPImageProcessor(size={"shortest_edge": TINY_VISION["image_size"]},
                                   crop_size=TINY_VISION["image_size"])

    images = reference_images(2, seed=7)
    for i, im in enumerate(images):
        im.save(args.out / f"ref{i}.png")
    pixels = processor(images, return_tensors="pt").pixel_values  # [2, 3, 32, 32]
    g = torch.Generator().manual_seed(11)
    arcface = torch.randn(2, ID_DIM, generator=g) * 3.0  # un-normalised, as insightface's
    noise = torch.randn(1, 4, LOOP["height"] // 2, LOOP["width"] // 2, generator=g)

    t = {"pixels": pixels, "id_embeds": arcface, "noise": noise}
    meta = {"versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                         "torch": torch.__version__},
            "prompt": PROMPT, "loop": LOOP, "tiny_vision": TINY_VISION,
            "vision_head_dim": VISION_HEAD_DIM, "perceiver_head_dim": PERCEIVER_HEAD_DIM,
            "files": {"v1": "photomaker-v1.bin", "v2": "photomaker-v2.safetensors"}}

    for version, seed in [("v1", 1), ("v2", 2)]:
        pipe = Pipe.from_pretrained(tiny, torch_dtype=torch.float32)
        enc = (TinyV1 if version == "v1" else TinyV2)()
        id_sd = randomize(enc, seed)
        lora = tiny_lora(pipe.unet, seed + 100)
        if version == "v1":
            path = args.out / "photomaker-v1.bin"
            torch.save({"id_encoder": id_sd, "lora_weights": lora}, path)
        else:
            path = args.out / "photomaker-v2.safetensors"
            flat = {f"id_encoder.{k}": v.contiguous() for k, v in id_sd.items()}
            flat.update({f"lora_weights.{k}": v.contiguous() for k, v in lora.items()})
            save_file(flat, path)
        pipe.load_photomaker_adapter(str(args.out), weight_name=path.name, subfolder="",
                                     trigger_word="img", pm_version=version)
        if version == "v1":
            pipe.num_tokens = 1  # v1 as released (1e78aa6): one class token per reference
        pipe.id_image_processor = processor
        per_ref = pipe.num_tokens
        meta[version] = {"tokens_per_reference": per_ref,
                         "trigger_id": pipe.tokenizer_2.convert_tokens_to_ids("img")}
        enc = pipe.id_encoder
        px = pixels.unsqueeze(0)
        ids = arcface.unsqueeze(0)
        with torch.no_grad():
            vis = enc.vision_model(pixels)
            if version == "v1":
                tok = torch.cat([enc.visual_projection(vis[1]), enc.visual_projection_2(vis[1])], -1)
                t[f"{version}.id_tokens"] = tok.unsqueeze(1)  # [N, 1, C]
            else:
                t[f"{version}.id_tokens"] = enc.qformer_perceiver(arcface, vis[0])  # [N, 2, C]
            for n in (1, 2):
                pe, _, pooled, _, mask = pipe.encode_prompt_with_trigger_word(
                    prompt=PROMPT, device="cpu", num_id_images=n, do_classifier_free_guidance=False)
                k = f"{version}.refs{n}"
                if n == 2:
                    t[f"{k}.prompt_embeds"] = pe.clone()
                t[f"{k}.pooled"] = pooled
                args_ = (px[:, :n], pe.clone(), mask) + ((ids[:, :n],) if version == "v2" else ())
                t[f"{k}.fused"] = enc(*args_)
                meta[version][f"refs{n}"] = {"class_tokens_mask": mask[0].nonzero()[:, 0].tolist()}

            captured = {}
            unet_forward = pipe.unet.forward

            def grab(*a, **kw):
                step = len(captured)
                captured[step] = (kw["encoder_hidden_states"].clone(),
                                  kw["added_cond_kwargs"]["text_embeds"].clone())
                return unet_forward(*a, **kw)

            pipe.unet.forward = grab
            image = pipe(LOOP["prompt"], input_id_images=images, id_embeds=arcface if version == "v2" else None,
                         num_inference_steps=LOOP["steps"], guidance_scale=LOOP["guidance"],
                         start_merge_step=LOOP["start_merge_step"], height=LOOP["height"],
                         width=LOOP["width"], latents=noise.clone(), output_type="np").images
            pipe.unet.forward = unet_forward
        last = len(captured) - 1
        for which, step in [("first", 0), ("last", last)]:
            context, pooled = captured[step]
            # The negative row is zeros (force_zeros_for_empty_prompt): keep the prompt's row.
            assert not context[0].any() and not pooled[0].any()
            t[f"{version}.loop.context_{which}"] = context[1:]
            t[f"{version}.loop.pooled_{which}"] = pooled[1:]
        t[f"{version}.loop.image"] = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
        meta[version]["loop_steps_seen"] = len(captured)
        print(f"{version}: id tokens {list(t[f'{version}.id_tokens'].shape)}, "
              f"mask(2 refs) {meta[version]['refs2']['class_tokens_mask']}, "
              f"image mean {image.mean():.4f}")

    tensors = {k: v.float().contiguous() for k, v in t.items()}
    save_file(tensors, args.out / "parity.safetensors")
    meta["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    meta["notes"] = (
        "pixels: CLIPImageProcessor output for ref0.png, ref1.png (32 px); id_embeds: the "
        "un-normalised ArcFace stand-ins v2 takes; <v>.id_tokens: the encoder's per-reference "
        "tokens [N, tokens, 64]; <v>.refsN.prompt_embeds / pooled / fused: "
        "encode_prompt_with_trigger_word for `prompt` with N references (no guidance), then the "
        "id_encoder's fuse; <v>.loop.context_first / _last: the UNet's encoder_hidden_states at "
        "the loop's first and last step (negative row first: zeros, force_zeros_for_empty_prompt), "
        "pooled_* the text_embeds; <v>.loop.image: output_type='np' as [1, 3, H, W] in [0, 1].")
    (args.out / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
