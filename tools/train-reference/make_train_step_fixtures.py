#!/usr/bin/env python3
"""One PyTorch training step of the IP-Adapter family, for idforge-train's step parity test
(train/tests/step_parity.rs).

For each case below this script loads the tiny SD pipeline of diffusion/tests/fixtures/tiny-sd,
puts an existing fixture adapter of diffusion/tests/fixtures/ip-adapter/ on its UNet with
diffusers' own `load_ip_adapter` (IPAdapterAttnProcessor2_0 on every attn2, numbered by
`attn_processors` order; FaceID's LoRA through the PEFT backend) at scale 1.0, freezes the UNet
(`requires_grad_(False)`) and trains only the adapter's tensors -- the image projection, every
`to_k_ip` / `to_v_ip` and, for FaceID, the LoRA -- the way tencent-ailab/IP-Adapter's
`tutorial_train.py` / `tutorial_train_faceid.py` step does:

    noise (+ noise_offset * randn(B, C, 1, 1), as tutorial_train_sdxl.py)
    noisy = DDPMScheduler.add_noise(latents, noise, t)
    pred  = unet(noisy, t, text, added_cond_kwargs={"image_embeds": [embeds]})
    target = noise, or get_velocity(latents, noise, t) for v-prediction
    loss  = F.mse_loss(pred, target)                         (IP-Adapter)
          | per-sample MSE * min(snr, gamma) / snr (or /(snr+1)), mean   (diffusers'
            train_text_to_image.py with compute_snr)
          | per-sample MSE over the face box // 8, mean       (persongen diffusion_loss.py)
    (loss / k).backward() per micro-batch (accelerate's gradient accumulation)
    clip_grad_norm_(all trained, max_norm); optimizer.step(); LambdaLR.step()

with torch.optim.AdamW / Adam over parameter groups with their own learning rates. Each case
runs two optimizer steps on two batches and records the loss, every trained tensor's gradient
at the first step (before clipping), the global gradient norm and the weights after each step.
Tensors are named by their key in the adapter file (`image_proj.proj.weight`,
`ip_adapter.1.to_k_ip.weight`, `ip_adapter.0.to_q_lora.down.weight`), torch's layout.

It also records learning-rate schedules (torch's LambdaLR with persongen's warm-up lambda and
diffusers' `get_scheduler`) over a few steps.

Writes train/tests/fixtures/:
  step_<case>.safetensors   inputs (in.<step>.<micro>.<name>), grad.<key>, step<s>.<key>
  step_parity.json          the cases' settings, losses, gradient norms, learning rates,
                            schedules, versions

Run with tools/train-reference/run (the venv of tools/diffusers-reference plus peft).
"""
import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "diffusion/tests/fixtures"

# Latents 16x16 (a 128 px image), 7 text tokens of width 8 (the tiny UNet's cross width).
BATCH, LATENT, TOKENS = 2, 16, 7
CASES = {
    # IP-Adapter's recipe with everything the trainer adds switched on: two parameter groups,
    # AdamW with weight decay, persongen's warm-up, gradient clipping (active: max_norm below
    # the gradient norm), two references per row.
    "plain": {
        "adapter": "plain.safetensors",
        "references": 2,
        "prediction": "epsilon",
        "optimizer": {"kind": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
        "groups": [{"prefix": "image_proj.", "lr": 1e-3}, {"prefix": "ip_adapter.", "lr": 2e-3}],
        "schedule": {"warmup": 2, "warmup_style": "persongen", "decay": "constant", "total": 2},
        "max_grad_norm": 0.02,
        "accumulation": 1,
        "timesteps": [[90, 710], [420, 999]],
    },
    # v-prediction with min-SNR-5 weighting, a noise offset, plain Adam (L2 weight decay),
    # cosine decay, and two micro-batches accumulated per step.
    "vpred_snr": {
        "adapter": "plain.safetensors",
        "references": 1,
        "prediction": "v_prediction",
        "snr_gamma": 5.0,
        "noise_offset": 0.1,
        "optimizer": {"kind": "adam", "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.05},
        "groups": [{"prefix": "", "lr": 1e-3}],
        "schedule": {"warmup": 0, "warmup_style": "diffusers", "decay": "cosine", "total": 4},
        "max_grad_norm": None,
        "accumulation": 2,
        "timesteps": [[5, 300], [640, 880], [150, 37], [999, 0]],
    },
    # persongen's masked loss: prediction and target cropped to each sample's face box
    # (pixels, // 8 to latents), per-sample MSE, mean.
    "masked": {
        "adapter": "plain.safetensors",
        "references": 1,
        "prediction": "epsilon",
        "boxes": [[[16.0, 24.0, 80.0, 96.0], [41.5, 8.0, 127.0, 71.9]],
                  [[0.0, 0.0, 64.0, 64.0], [33.0, 60.0, 110.0, 128.0]]],
        "optimizer": {"kind": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
        "groups": [{"prefix": "image_proj.", "lr": 1e-4}, {"prefix": "", "lr": 1e-3}],
        "schedule": {"warmup": 0, "warmup_style": "persongen", "decay": "constant", "total": 2},
        "max_grad_norm": None,
        "accumulation": 1,
        "timesteps": [[250, 500], [750, 60]],
    },
    # IP-Adapter-FaceID as tutorial_train_faceid.py trains it: the MLP projection, to_k_ip /
    # to_v_ip and the LoRA on every attention processor; the LoRA in its own group (persongen's
    # "LoRA 1e-4, the rest 1e-5", scaled up so that a step moves the weights visibly).
    "faceid": {
        "adapter": "faceid.safetensors",
        "references": 2,
        "prediction": "epsilon",
        "optimizer": {"kind": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
        "groups": [{"prefix": "_lora.", "lr": 1e-3}, {"prefix": "", "lr": 1e-4}],
        "schedule": {"warmup": 3, "warmup_style": "persongen", "decay": "constant", "total": 2},
        "max_grad_norm": 0.05,
        "accumulation": 1,
        "timesteps": [[333, 666], [10, 990]],
    },
    # IP-Adapter Plus as tutorial_train_plus.py trains it: the resampler on CLIP's penultimate
    # hidden states (its latents, attention and feed-forward) and to_k_ip / to_v_ip. The
    # projection is a depth-1, 16-wide resampler drawn here (adapter_plus.safetensors, IP-Adapter
    # layout) and put in diffusers' IPAdapterPlusImageProjection, so the fixture stays small.
    "plus": {
        "adapter": "plus.safetensors",
        "tiny_plus": {"depth": 1, "dim": 16, "queries": 4},
        "inputs": "hidden_states",
        "references": 2,
        "prediction": "epsilon",
        "optimizer": {"kind": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
        "groups": [{"prefix": "image_proj.", "lr": 1e-3}, {"prefix": "", "lr": 2e-3}],
        "schedule": {"warmup": 2, "warmup_style": "persongen", "decay": "constant", "total": 2},
        "max_grad_norm": 0.01,
        "accumulation": 1,
        "timesteps": [[120, 870], [505, 3]],
    },
    # IP-Adapter-FaceID-PlusV2: the ArcFace MLP, the face perceiver resampler on CLIP's hidden
    # states of the face crop (diffusers' `clip_embeds`), the shortcut on, to_k_ip / to_v_ip.
    "faceid_plus_v2": {
        "adapter": "faceid_plus_v2.safetensors",
        "inputs": "id_embeds+hidden_states",
        "shortcut": True,
        "references": 1,
        "prediction": "epsilon",
        "optimizer": {"kind": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
        "groups": [{"prefix": "image_proj.", "lr": 1e-4}, {"prefix": "", "lr": 1e-3}],
        "schedule": {"warmup": 0, "warmup_style": "persongen", "decay": "constant", "total": 2},
        "max_grad_norm": None,
        "accumulation": 1,
        "timesteps": [[640, 45], [260, 940]],
    },
}

# Key spelling of IP-Adapter's Resampler (the adapter file) -> diffusers'
# IPAdapterPlusImageProjection, as diffusers' `_convert_ip_adapter_image_proj_to_diffusers` maps
# it (layer index i): i.0.norm1/norm2 -> i.ln0/ln1, i.0.to_q/to_out -> i.attn.to_q/to_out.0,
# i.0.to_kv -> i.attn.to_k + i.attn.to_v (halves), i.1.{0,1,3} -> i.ff.{0, 1.net.0.proj, 1.net.2}.
def plus_to_diffusers(state):
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        i, sub, name = parts[1], parts[2], ".".join(parts[3:])
        if sub == "0":
            if name.startswith("norm1"):
                out[f"layers.{i}.ln0.{name[6:]}"] = value
            elif name.startswith("norm2"):
                out[f"layers.{i}.ln1.{name[6:]}"] = value
            elif name == "to_q.weight":
                out[f"layers.{i}.attn.to_q.weight"] = value
            elif name == "to_out.weight":
                out[f"layers.{i}.attn.to_out.0.weight"] = value
            elif name == "to_kv.weight":
                k, v = value.chunk(2, dim=0)
                out[f"layers.{i}.attn.to_k.weight"] = k
                out[f"layers.{i}.attn.to_v.weight"] = v
            else:
                raise SystemExit(key)
        else:
            idx, rest = name.split(".", 1)
            out[f"layers.{i}.ff." + {"0": "0", "1": "1.net.0.proj", "3": "1.net.2"}[idx] + "." + rest] = value
    return out


def tiny_plus(shape, ip_layers, out_dir):
    """A small Plus adapter (IP-Adapter layout) and the diffusers projection holding it."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    g = torch.Generator().manual_seed(7)
    d, q, depth, embed, cross = shape["dim"], shape["queries"], shape["depth"], 16, 8

    def w(*s, std=0.3):
        return torch.randn(*s, generator=g) * std

    state = {"latents": w(1, q, d, std=d ** -0.5), "proj_in.weight": w(d, embed), "proj_in.bias": w(d, std=0.05),
             "proj_out.weight": w(cross, d), "proj_out.bias": w(cross, std=0.05),
             "norm_out.weight": 1 + w(cross, std=0.1), "norm_out.bias": w(cross, std=0.05)}
    for i in range(depth):
        for n in ("norm1", "norm2"):
            state[f"layers.{i}.0.{n}.weight"] = 1 + w(d, std=0.1)
            state[f"layers.{i}.0.{n}.bias"] = w(d, std=0.05)
        state[f"layers.{i}.0.to_q.weight"] = w(d, d)
        state[f"layers.{i}.0.to_kv.weight"] = w(2 * d, d)
        state[f"layers.{i}.0.to_out.weight"] = w(d, d)
        state[f"layers.{i}.1.0.weight"] = 1 + w(d, std=0.1)
        state[f"layers.{i}.1.0.bias"] = w(d, std=0.05)
        state[f"layers.{i}.1.1.weight"] = w(4 * d, d)
        state[f"layers.{i}.1.3.weight"] = w(d, 4 * d)
    proj = IPAdapterPlusImageProjection(embed_dims=embed, output_dims=cross, hidden_dims=d, depth=depth,
                                        dim_head=d, heads=1, num_queries=q, ffn_ratio=4)
    proj.load_state_dict(plus_to_diffusers(state), strict=True)
    file = {f"image_proj.{k}": v.contiguous() for k, v in state.items()}
    file.update({k: v for k, v in ip_layers.items() if k.startswith("ip_adapter.")})
    save_file(file, out_dir / "adapter_plus.safetensors")
    return proj, out_dir / "adapter_plus.safetensors"


def lr_lambda(s):
    w, style = s["warmup"], s["warmup_style"]

    def f(step):
        if style == "persongen" and s["decay"] == "constant":
            # persongen: LambdaLR(lambda s: min((s + 1) / warmup, 1)).
            return min((step + 1) / w, 1.0) if w > 0 else 1.0
        if step < w:
            # diffusers' get_scheduler warm-up (persongen's shifted by one).
            return (step + 1) / w if style == "persongen" else float(step) / float(max(1, w))
        if s["decay"] == "constant":
            return 1.0
        progress = float(step - w) / float(max(1, s["total"] - w))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    return f


def group_of(key, groups):
    for i, g in enumerate(groups):
        if g["prefix"] in key:
            return i
    raise SystemExit(f"{key} is in no group")


class Joined:
    """A file tensor diffusers keeps as several parameters (a resampler's `to_kv` as `to_k` and
    `to_v`): its value, gradient and trainable flag are theirs concatenated on dim 0."""

    def __init__(self, parts):
        self.parts = parts

    def detach(self):
        return torch.cat([p.detach() for p in self.parts], dim=0)

    @property
    def grad(self):
        return torch.cat([p.grad for p in self.parts], dim=0)

    def requires_grad_(self, on):
        for p in self.parts:
            p.requires_grad_(on)


def build(case, out_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(FIXTURES / "tiny-sd", torch_dtype=torch.float32)
    unet = pipe.unet
    path = FIXTURES / "ip-adapter" / case["adapter"]
    pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(1.0)
    if "tiny_plus" in case:
        proj, path = tiny_plus(case["tiny_plus"], load_file(str(path)), out_dir)
        unet.encoder_hid_proj.image_projection_layers[0] = proj
    if case.get("shortcut"):
        unet.encoder_hid_proj.image_projection_layers[0].shortcut = True
    unet.requires_grad_(False)
    unet.train()
    # Each key of the adapter file is the UNet parameter holding the same values (diffusers
    # copies them unchanged: Linear weights, LayerNorms, PEFT lora_A / lora_B), or two of them
    # concatenated (a resampler's `to_kv`, split into `to_k` / `to_v`).
    file = load_file(str(path))
    params = dict(unet.named_parameters())
    trained = {}
    for key, value in file.items():
        hits = [n for n, p in params.items() if p.shape == value.shape and torch.equal(p.detach(), value)]
        if len(hits) == 1:
            trained[key] = params[hits[0]]
            continue
        if len(hits) == 0 and key.endswith("to_kv.weight"):
            k, v = value.chunk(2, dim=0)
            hk = [n for n, p in params.items() if p.shape == k.shape and torch.equal(p.detach(), k)]
            hv = [n for n, p in params.items() if p.shape == v.shape and torch.equal(p.detach(), v)]
            if len(hk) == 1 and len(hv) == 1:
                trained[key] = Joined([params[hk[0]], params[hv[0]]])
                continue
        raise SystemExit(f"{key}: {len(hits)} UNet parameters hold its values: {hits}")
    for p in trained.values():
        p.requires_grad_(True)
    return unet, trained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "train/tests/fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers
    from diffusers import DDPMScheduler

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    meta = {"cases": {}, "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__}}
    for name, case in CASES.items():
        unet, trained = build(case, args.out)
        sched = DDPMScheduler.from_pretrained(FIXTURES / "tiny-sd", subfolder="scheduler",
                                              prediction_type=case["prediction"])
        keys = sorted(trained)
        groups = case["groups"]
        def leaves(ks):
            return [p for k in ks for p in (trained[k].parts if isinstance(trained[k], Joined) else [trained[k]])]

        param_groups = [{"params": leaves([k for k in keys if group_of(k, groups) == i]), "lr": g["lr"]}
                        for i, g in enumerate(groups)]
        o = case["optimizer"]
        opt_cls = torch.optim.AdamW if o["kind"] == "adamw" else torch.optim.Adam
        opt = opt_cls(param_groups, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(case["schedule"]))
        inputs = case.get("inputs", "id_embeds" if "faceid" in case["adapter"] else "image_embeds")
        proj = unet.encoder_hid_proj.image_projection_layers[0]
        tensors, record = {}, {"loss": [], "micro_losses": [], "grad_norm": [], "lr": []}
        k = case["accumulation"]
        for step in range(2):
            opt.zero_grad()
            record["lr"].append([g["lr"] for g in opt.param_groups])
            micro_losses = []
            for m in range(k):
                b = BATCH
                inp = {
                    "latents": torch.randn(b, 4, LATENT, LATENT),
                    "noise": torch.randn(b, 4, LATENT, LATENT),
                    "context": torch.randn(b, TOKENS, 8),
                    "timesteps": torch.tensor(case["timesteps"][step * k + m], dtype=torch.float32),
                }
                refs = case["references"]
                if "id_embeds" in inputs:
                    inp["id_embeds"] = F.normalize(torch.randn(b, refs, 16), dim=-1)
                if "hidden_states" in inputs:
                    # CLIP's penultimate hidden states: [batch, references, 1 + patches, width].
                    inp["hidden_states"] = torch.randn(b, refs, 5, 16)
                if inputs == "image_embeds":
                    inp["image_embeds"] = torch.randn(b, refs, 16)
                if case.get("noise_offset"):
                    inp["offset_noise"] = torch.randn(b, 4)
                for key, v in inp.items():
                    tensors[f"in.{step}.{m}.{key}"] = v
                t = inp["timesteps"].long()
                noise = inp["noise"]
                if case.get("noise_offset"):
                    noise = noise + case["noise_offset"] * inp["offset_noise"][:, :, None, None]
                noisy = sched.add_noise(inp["latents"], noise, t)
                if inputs == "id_embeds+hidden_states":
                    # FaceID-Plus: the ID embeddings go through added_cond_kwargs, CLIP's
                    # through the projection's `clip_embeds` (diffusers' documented use).
                    proj.clip_embeds = inp["hidden_states"]
                    embeds = inp["id_embeds"]
                else:
                    embeds = inp[inputs]
                pred = unet(noisy, t, encoder_hidden_states=inp["context"],
                            added_cond_kwargs={"image_embeds": [embeds]}).sample
                if case["prediction"] == "epsilon":
                    target = noise
                else:
                    target = sched.get_velocity(inp["latents"], noise, t)
                if "boxes" in case:
                    losses = []
                    for i, box in enumerate(case["boxes"][step * k + m]):
                        x0, y0, x1, y1 = (int(v // 8) for v in box)
                        losses.append(F.mse_loss(pred[i, :, y0:y1, x0:x1].float(),
                                                 target[i, :, y0:y1, x0:x1].float()))
                    loss = sum(losses) / len(losses)
                elif case.get("snr_gamma"):
                    from diffusers.training_utils import compute_snr

                    snr = compute_snr(sched, t)
                    w = torch.stack([snr, case["snr_gamma"] * torch.ones_like(t)], dim=1).min(dim=1)[0]
                    w = w / snr if case["prediction"] == "epsilon" else w / (snr + 1)
                    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
                    loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * w).mean()
                else:
                    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                (loss / k).backward()
                micro_losses.append(loss.item())
            record["micro_losses"].append(micro_losses)
            record["loss"].append(sum(micro_losses) / k)
            if step == 0:
                for key in keys:
                    tensors[f"grad.{key}"] = trained[key].grad.detach().clone()
            params = leaves(keys)
            if case["max_grad_norm"] is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, case["max_grad_norm"])
            else:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            record["grad_norm"].append(norm.item())
            opt.step()
            lr_sched.step()
            for key in keys:
                tensors[f"step{step + 1}.{key}"] = trained[key].detach().clone()
        if case["max_grad_norm"] is not None:
            assert record["grad_norm"][0] > case["max_grad_norm"], "clipping is not active"
        # Adam's first step moves a weight by lr * g / (|g| + eps): for |g| near eps (1e-8) the
        # update hangs on float rounding of g, and no port can match it to 1e-6. Report the
        # smallest gradient element so that a case's draws can be chosen away from that
        # (faceid_plus_v2 keeps its projection's rate at 1e-4 for that reason).
        smallest = min(tensors[f"grad.{key}"].abs().min().item() for key in keys)
        print(f"{name}: smallest |gradient| element {smallest:.2e}")
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, args.out / f"step_{name}.safetensors")
        meta["cases"][name] = {**case, **record, "trained": keys}
        print(f"{name}: loss {record['loss']}, |g| {record['grad_norm']}, {len(keys)} tensors")

    # Learning-rate schedules: torch's LambdaLR over a dummy optimizer, persongen's lambda and
    # diffusers' get_scheduler, base lr 1.0.
    from diffusers.optimization import get_scheduler

    schedules = []
    for sched_name, warmup, total in [("constant_with_warmup", 3, 8), ("cosine", 3, 8), ("cosine", 0, 5)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        s = get_scheduler(sched_name, opt, num_warmup_steps=warmup, num_training_steps=total)
        values = []
        for _ in range(total + 2):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        schedules.append({"source": "diffusers", "name": sched_name, "warmup": warmup, "total": total,
                          "lr": values})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min((step + 1) / 4, 1))
    values = []
    for _ in range(7):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    schedules.append({"source": "persongen", "name": "constant_with_warmup", "warmup": 4, "total": 7,
                      "lr": values})
    meta["schedules"] = schedules
    (args.out / "step_parity.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
