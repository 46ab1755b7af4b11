"""Times one IP-Adapter-FaceID training step in PyTorch + diffusers on the shapes of idforge's
`train/benches/train_step.rs` (SD1.5-sized UNet with random weights, frozen; the FaceID
projection, every `to_k_ip` / `to_v_ip` and a rank-128 LoRA on q/k/v/out of every attention
trained with AdamW), for the README's side-by-side figure.

    $IDFORGE_CACHE/venv-diffusers-reference/bin/python tools/train-reference/time_step.py \
        --threads 1 --latent 16 --batch 2

The step is tencent-ailab/IP-Adapter's `tutorial_train_faceid.py` loop body: add noise, UNet
forward with the image tokens, `F.mse_loss`, `backward`, `clip_grad_norm_`, `optimizer.step`,
`zero_grad`. The adapter is put on the UNet with diffusers' own loader
(`_load_ip_adapter_weights`, IPAdapterAttnProcessor2_0 on every attn2) and PEFT's LoRA (the
tutorial's LoRAIPAttnProcessor computes the same products). Prints one JSON line: ms per step,
best of N rounds after a warm-up, and the peak resident memory (`ru_maxrss`).
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

SD15 = dict(
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    layers_per_block=2,
    sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


def faceid_state(unet, cross, id_dim=512, tokens=4):
    """A random FaceID adapter in the published layout (`image_proj.proj.{0,2}`,
    `image_proj.norm`, `ip_adapter.<i>.to_{k,v}_ip`)."""
    image_proj = {
        "proj.0.weight": torch.randn(id_dim * 2, id_dim) * 0.02,
        "proj.0.bias": torch.zeros(id_dim * 2),
        "proj.2.weight": torch.randn(cross * tokens, id_dim * 2) * 0.02,
        "proj.2.bias": torch.zeros(cross * tokens),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip = {}
    for i, (name, _) in enumerate(unet.attn_processors.items()):
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            hidden = attn.to_k.out_features
            ip[f"{i}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.02
            ip[f"{i}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.02
    return {"image_proj": image_proj, "ip_adapter": ip}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lora-rank", type=int, default=128)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from peft import LoraConfig

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        # Same arithmetic as idforge's CUDA f32 (no TF32).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    unet = UNet2DConditionModel(**SD15)
    unet.requires_grad_(False)
    cross = SD15["cross_attention_dim"]
    unet._load_ip_adapter_weights([faceid_state(unet, cross)], low_cpu_mem_usage=False)
    unet.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.encoder_hid_proj.requires_grad_(True)
    for proc in unet.attn_processors.values():
        if isinstance(proc, torch.nn.Module):
            proc.requires_grad_(True)
    unet.to(dev)
    trained = [q for q in unet.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    b = a.batch

    def step():
        latents = torch.randn(b, 4, a.latent, a.latent, device=dev)
        noise = torch.randn_like(latents)
        t = torch.tensor([(100 + 300 * i) % 1000 for i in range(b)], device=dev)
        noisy = scheduler.add_noise(latents, noise, t)
        ctx = torch.randn(b, 77, cross, device=dev)
        embeds = torch.randn(b, 1, 512, device=dev)
        pred = unet(noisy, t, ctx, added_cond_kwargs={"image_embeds": [embeds]}).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        value = loss.item()  # waits for the device
        return value

    step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(a.rounds):
        s = time.perf_counter()
        step()
        best = min(best, (time.perf_counter() - s) * 1e3)
    row = {
        "bench": "train_step", "method": "ip-adapter-faceid", "model": "unet-sd15",
        "backend": f"torch-{torch.__version__}-{a.device}-f32", "latent": a.latent, "batch": b,
        "lora_rank": a.lora_rank, "trained_tensors": len(trained),
        "ms_per_step": round(best, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rounds": a.rounds, "threads": a.threads,
    }
    if cuda:
        row["device_name"] = torch.cuda.get_device_name(dev)
        row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
