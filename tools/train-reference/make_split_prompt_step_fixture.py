#!/usr/bin/env python3
"""Two split-prompt (persongen `ipmakerbgbody`) training steps in PyTorch, for
train/tests/split_prompt_step.rs.

Built from matosjan/persongen's own classes, imported at run time from a checkout given with
--persongen-src (its `src/model/ipmakerbgbody/model.py` imports `ip_adapter.attention_processor`
from tencent-ailab/IP-Adapter, given with --ip-adapter-src):

  - `IPMakerBGBody(tiny-sdxl, rank=2, weight_dtype="fp32")`: persongen's constructor on the tiny
    SDXL pipeline of diffusion/tests/fixtures/tiny-sdxl, with its ID encoder class swapped for a
    tiny one (the repo's `OrigPhotoMakerIDEncoder.forward`, tools/adapters-reference's tiny
    PhotoMaker widths) and its CLIP image processor sized 32 px. `prepare_for_training` does the
    rest: everything frozen but `visual_projection{,_2}` and `fuse_module`, PEFT LoRA (gaussian)
    on every to_q / to_k / to_v / to_out.0, `myIPAttnProcessorTwoConds2_0` on every cross
    attention with `to_{k,v}_ip_{bg,body}` copied from the layer's `to_k` / `to_v`.
  - `load_state_dict_` (persongen's loader) then reads the ID encoder and the UNet LoRA of
    diffusion/tests/fixtures/photomaker/photomaker-v1.bin (fine-tuning from PhotoMaker, so that
    the LoRA's `up` is not zero and every tensor gets a gradient at the first step).
  - The optimizer groups of train_ipmakerbg_body.py l.75-87 (lora_modules, adapter_modules,
    visual_projection, visual_projection_2, fuse_module), `torch.optim.Adam` as
    train_ipmakerbgbody.yaml, `LambdaLR(min((s + 1) / warmup, 1))` (l.103) with warm-up 2, and
    distinct rates per group of persongen's size (1e-5 … 5e-5, see GROUPS).
  - Two steps of src/trainer/trainer.py's `process_batch` (l.41-65) with `DiffusionLoss`
    (src/loss/diffusion_loss.py) on a batch of two captions "main\\n\\nbackground\\n\\nbody"
    with 1 and 2 references: step 0 with the masked loss (face boxes), step 1 with the whole
    condition dropped (`do_cfg`: empty prompts, no ID encoder, the `0 * sum(params)` dummy).

The model's own random draws (VAE sample, noise, timesteps) are recorded where they are used
(`noise_scheduler.add_noise`), as are the text encodings, the ID pixels, the UNet's context and
time ids. Writes train/tests/fixtures/split_prompt/step.safetensors:
  in.{s}.{latents,noise,timesteps,time_ids}; step 0's in.0.{i}.{main,pooled,background,body,
  pixels} and fused.0 (the UNet's main 77 tokens after the fuse); step 1's in.empty{,_pooled}
  (every part of a dropped condition); grad.0.<key> (persongen's trainer does not clip) and
  after.1.<key> (after both steps; step 1's gradient norm is in the JSON), with idforge's keys (`lora_weights.unet.…`, `id_encoder.…`,
  `split_prompt.{i}.to_k_ip_bg.weight`, …); and step.json (losses, captions, class tokens, boxes,
  rates, flags).

Get the checkouts without the network from the mirrors:
  mkdir -p /tmp/pg /tmp/ipa
  git -C /work/.mirror/matosjan+persongen/repo archive HEAD src | tar -x -C /tmp/pg
  git -C /work/.mirror/tencent-ailab+IP-Adapter/repo archive HEAD ip_adapter | tar -x -C /tmp/ipa
(or clone github.com/matosjan/persongen and github.com/tencent-ailab/IP-Adapter), then run
(the venv of tools/diffusers-reference with this folder's requirements, offline, seconds):
  tools/train-reference/run split --persongen-src /tmp/pg --ip-adapter-src /tmp/ipa
"""
import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "diffusion/tests/fixtures"
sys.path.insert(0, str(ROOT / "tools/adapters-reference"))
import make_photomaker_fixtures as pmf  # noqa: E402

CAPTIONS = [
    "a photo of a man img\n\na sunny beach with palm trees\n\nwearing a red jacket",
    "a man img smiling\n\na snowy mountain\n\nin a blue coat",
]
REFS = [1, 2]
# Step 0: masked loss with these face boxes (pixels of the 16 px target: latent = box // 8 as
# persongen, here on 8×8 latents); step 1: the whole condition dropped.
BOXES = [[8.0, 8.0, 40.0, 48.0], [0.0, 16.0, 56.0, 64.0]]
STEPS = [{"do_cfg": False, "masked_loss": True}, {"do_cfg": True, "masked_loss": False}]
ORIGINAL_SIZES = [[64, 64], [80, 60]]
CROP_TOP_LEFTS = [[0, 0], [4, 2]]
# persongen trains every group at 1e-5; distinct rates of that size show a group mix-up. (Larger
# rates would not test more: the tiny model's ID-encoder gradients hold elements below Adam's
# eps 1e-8, where an update lr·g/(|g| + eps) turns float32 rounding of g into lr-sized noise.)
GROUPS = {"lora": 1e-5, "adapter": 2e-5, "vis_proj": 3e-5, "vis_proj_2": 4e-5, "fuse": 5e-5}
WARMUP = 2
RANK = 2


def import_persongen(src: Path, ipa: Path):
    """persongen's ipmakerbgbody modules without `src/model/__init__.py` (which imports every
    model and their dependencies) and IP-Adapter's `ip_adapter` without its `__init__`."""
    for name, path in [("src", src / "src"), ("src.model", src / "src/model"),
                       ("ip_adapter", ipa / "ip_adapter")]:
        if not path.is_dir():
            raise SystemExit(f"{path} not found: check --persongen-src / --ip-adapter-src")
        m = types.ModuleType(name)
        m.__path__ = [str(path)]
        sys.modules[name] = m
    model = importlib.import_module("src.model.ipmakerbgbody.model")
    enc = importlib.import_module("src.model.ipmakerbgbody.orig_id_encoder")
    return model, enc


def tiny_encoder_class(enc, w2, cross):
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    class TinyOrigPhotoMakerIDEncoder(enc.OrigPhotoMakerIDEncoder):
        # orig_id_encoder.py's __init__ at the tiny widths (no clip_encoder.pth); forward is
        # the repo's.
        def __init__(self):
            CLIPVisionModelWithProjection.__init__(self, CLIPVisionConfig(**pmf.TINY_VISION))
            self.visual_projection_2 = nn.Linear(pmf.TINY_VISION["hidden_size"], w2, bias=False)
            self.fuse_module = enc.FuseModule(cross)

    return TinyOrigPhotoMakerIDEncoder


def our_key(name, processor_index):
    """idforge's checkpoint key of a trained torch parameter of the IPMakerBGBody model (None:
    not trained)."""
    if name.startswith("id_encoder."):
        rest = name[len("id_encoder."):]
        return name if rest.startswith(("visual_projection", "fuse_module.")) else None
    if name.startswith("adapter_modules."):
        i, rest = name[len("adapter_modules."):].split(".", 1)
        return f"split_prompt.{i}.{rest}"
    if name.startswith("unet.") and ".processor.to_" in name:
        # The same processors reached through the UNet (named_parameters names a shared
        # tensor once): their index in attn_processors is the adapter_modules index.
        proc, rest = name[len("unet."):].split(".processor.", 1)
        return f"split_prompt.{processor_index.index(proc + '.processor')}.{rest}"
    for short, mod in [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("out", "to_out.0")]:
        for part, which in [("lora_A", "down"), ("lora_B", "up")]:
            tail = f".{mod}.{part}.default.weight"
            if name.startswith("unet.") and name.endswith(tail):
                attn = name[len("unet."):-len(tail)]
                assert f"{attn}.processor" in processor_index, attn
                return f"lora_weights.unet.{attn}.processor.to_{short}_lora.{which}.weight"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--persongen-src", type=Path, required=True, help="a matosjan/persongen checkout")
    ap.add_argument("--ip-adapter-src", type=Path, required=True, help="a tencent-ailab/IP-Adapter checkout")
    ap.add_argument("--out", type=Path, default=ROOT / "train/tests/fixtures/split_prompt")
    args = ap.parse_args()
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, PretrainedConfig

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model, enc = import_persongen(args.persongen_src, args.ip_adapter_src)
    tiny = FIXTURES / "tiny-sdxl"
    w1 = PretrainedConfig.from_pretrained(tiny, subfolder="text_encoder").hidden_size
    w2 = PretrainedConfig.from_pretrained(tiny, subfolder="text_encoder_2").hidden_size
    model.OrigPhotoMakerIDEncoder = tiny_encoder_class(enc, w2, w1 + w2)
    m = model.IPMakerBGBody(str(tiny), rank=RANK, weight_dtype="fp32", device="cpu")
    size = pmf.TINY_VISION["image_size"]
    m.id_image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                              crop_size={"height": size, "width": size})
    pm = torch.load(FIXTURES / "photomaker/photomaker-v1.bin", map_location="cpu", weights_only=True)
    m.load_state_dict_({"lora_weights": pm["lora_weights"], "id_encoder": pm["id_encoder"]})

    # What the model draws and encodes, recorded where it is used.
    rec = {"add_noise": [], "trigger": [], "plain": [], "pixels": [], "unet": []}
    add_noise = m.noise_scheduler.add_noise

    def recording_add_noise(x, noise, t):
        rec["add_noise"].append((x.detach().clone(), noise.clone(), t.clone()))
        return add_noise(x, noise, t)

    m.noise_scheduler.add_noise = recording_add_noise
    trigger = m.encode_prompt_with_trigger_word

    def recording_trigger(**kw):
        pe, pooled, mask = trigger(**kw)
        rec["trigger"].append((pe.clone(), pooled.clone(), None if mask is None else mask.clone()))
        return pe, pooled, mask

    m.encode_prompt_with_trigger_word = recording_trigger
    plain = m.encode_prompt

    def recording_plain(**kw):
        pe, pooled = plain(**kw)
        rec["plain"].append(pe.clone())
        return pe, pooled

    m.encode_prompt = recording_plain
    m.id_encoder.register_forward_pre_hook(lambda mod, a: rec["pixels"].append(a[0].detach().clone()))
    m.unet.register_forward_pre_hook(
        lambda mod, a, kw: rec["unet"].append((kw["encoder_hidden_states"].detach().clone(),
                                               kw["added_cond_kwargs"]["time_ids"].clone())),
        with_kwargs=True)

    # train_ipmakerbg_body.py l.75-103.
    lora_params = filter(lambda p: p.requires_grad, m.lora_modules.parameters())
    adapter_params = filter(lambda p: p.requires_grad, m.adapter_modules.parameters())
    vis = filter(lambda p: p.requires_grad, m.id_encoder.visual_projection.parameters())
    vis2 = filter(lambda p: p.requires_grad, m.id_encoder.visual_projection_2.parameters())
    fuse = filter(lambda p: p.requires_grad, m.id_encoder.fuse_module.parameters())
    groups = [
        {"params": lora_params, "lr": GROUPS["lora"], "name": "lora_params"},
        {"params": adapter_params, "lr": GROUPS["adapter"], "name": "adapter_modules_params"},
        {"params": vis, "lr": GROUPS["vis_proj"], "name": "vis_proj_params"},
        {"params": vis2, "lr": GROUPS["vis_proj_2"], "name": "vis_proj_2_params"},
        {"params": fuse, "lr": GROUPS["fuse"], "name": "fuse_module_params"},
    ]
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda s: min((s + 1) / WARMUP, 1.0))

    processors = list(m.unet.attn_processors.keys())
    trained = {}
    for n, p in m.named_parameters():
        k = our_key(n, processors)
        if k is not None:
            assert p.requires_grad, n
            trained.setdefault(k, p)
        else:
            assert not p.requires_grad, f"{n} trains but has no key"
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in trained.values()}, "groups = the keyed tensors"
    keys = sorted(trained)
    group_of = {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]}

    refs = [Image.open(FIXTURES / f"photomaker/ref{i}.png").convert("RGB") for i in range(2)]
    g = torch.Generator().manual_seed(7)
    pixel_values = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    out, meta_steps = {}, []
    for s, flags in enumerate(STEPS):
        for v in rec.values():
            v.clear()
        # src/trainer/trainer.py l.41-65 (the flags fixed instead of drawn).
        optimizer.zero_grad()
        batch = {
            "pixel_values": pixel_values,
            "caption": list(CAPTIONS),
            "ref_images": [refs[:n] for n in REFS],
            "original_sizes": [list(x) for x in ORIGINAL_SIZES],
            "crop_top_lefts": [list(x) for x in CROP_TOP_LEFTS],
            "bbox": [list(b) for b in BOXES],
        }
        output = m(**batch, do_cfg=flags["do_cfg"], masked_loss=flags["masked_loss"])
        loss = m_loss(output)
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trained.values() if p.grad is not None))
        if s == 0:
            for k in keys:
                out[f"grad.{s}.{k}"] = trained[k].grad.detach().clone()
        else:
            # The dropped step's ID-encoder gradients are the dummy's zeros (not None: Adam
            # still moves those tensors by their moments).
            zero = [k for k in keys if k.startswith("id_encoder.")]
            assert all(trained[k].grad is not None and trained[k].grad.abs().max() == 0 for k in zero)
        lrs = [grp["lr"] for grp in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
        if s == len(STEPS) - 1:
            for k in keys:
                out[f"after.{s}.{k}"] = trained[k].detach().clone()

        (latents, noise, t), = rec["add_noise"]
        (context, time_ids), = rec["unet"]
        out[f"in.{s}.latents"], out[f"in.{s}.noise"] = latents, noise
        out[f"in.{s}.timesteps"], out[f"in.{s}.time_ids"] = t.float(), time_ids
        classes = []
        if flags["do_cfg"]:
            # Every part is the empty prompt's encoding (one copy kept).
            empty = rec["plain"][0]
            for pe, pooled, _ in rec["trigger"]:
                assert torch.equal(pe, empty)
            assert all(torch.equal(x, empty) for x in rec["plain"])
            out["in.empty"], out["in.empty_pooled"] = empty, rec["trigger"][0][1]
        else:
            out[f"fused.{s}"] = context[:, :77]
            for i in range(len(CAPTIONS)):
                pe, pooled, mask = rec["trigger"][i]
                out[f"in.{s}.{i}.main"], out[f"in.{s}.{i}.pooled"] = pe, pooled
                out[f"in.{s}.{i}.background"] = rec["plain"][2 * i]
                out[f"in.{s}.{i}.body"] = rec["plain"][2 * i + 1]
                out[f"in.{s}.{i}.pixels"] = rec["pixels"][i][0]
                classes.append(mask[0].nonzero()[:, 0].tolist())
        meta_steps.append({**flags, "loss": loss.item(), "grad_norm": norm.item(), "lrs": lrs,
                           "class_tokens": classes, "timesteps": t.tolist()})
        print(f"step {s}: loss {loss.item():.6f}, lrs {lrs}, t {t.tolist()}")

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in out.items()}, args.out / "step.safetensors")
    meta = {
        "captions": CAPTIONS, "references": REFS, "boxes": BOXES, "steps": meta_steps,
        "group_lrs": GROUPS, "warmup": WARMUP, "rank": RANK, "trained": len(keys),
        "groups": {k: group_of[id(trained[k])] for k in keys},
        "scheduler": m.noise_scheduler.config["beta_schedule"],
    }
    (args.out / "step.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(keys)} trained tensors; wrote {args.out}")


def m_loss(output):
    """src/loss/diffusion_loss.py's `DiffusionLoss` (imported from the checkout)."""
    from src.loss.diffusion_loss import DiffusionLoss

    return DiffusionLoss()(**output)["loss"]


if __name__ == "__main__":
    main()
