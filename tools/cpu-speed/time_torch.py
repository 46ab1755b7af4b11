"""PyTorch's side of tools/cpu-speed/run: one forward of the same network as idforge's
`diffusion/benches/cpu_speed.rs`, at full size with random weights, on the CPU.

    python tools/cpu-speed/time_torch.py --net unet --latent 64 --threads 1

NET: `unet` (diffusers' UNet2DConditionModel, SD1.5 config, batch 2 by default), `clip-image` /
`clip-text` (transformers' CLIP ViT-L/14 towers with projection), `dino` (transformers'
ViTModel at facebook/dino-vits16's config), `inception` (pytorch-fid's FID InceptionV3, built
by its own code without its weights). Prints one JSON line: ms per forward, best of N rounds
after a warm-up (and `cpu_ms`, the least CPU time of a round, all threads), under
torch.inference_mode, at `torch.set_num_threads(threads)`.
"""
import argparse
import json
import resource
import time

import torch


def cpu_seconds():
    """CPU time (user + system, all threads) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(net, batch, latent):
    if net == "unet":
        import importlib.util
        import pathlib

        spec = importlib.util.spec_from_file_location(
            "time_unet", pathlib.Path(__file__).parents[1] / "diffusers-reference" / "time_unet.py")
        time_unet = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(time_unet)
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel(**time_unet.SD15).eval()
        x = torch.randn(batch, 4, latent, latent)
        ctx = torch.randn(batch, 77, 768)
        t = torch.tensor([500])
        return lambda: model(x, t, ctx).sample
    if net == "clip-image":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        # openai/clip-vit-large-patch14's vision_config.
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                  num_hidden_layers=24, patch_size=14, image_size=224,
                                  projection_dim=768)
        model = CLIPVisionModelWithProjection(config).eval()
        x = torch.randn(batch, 3, 224, 224)
        return lambda: model(pixel_values=x).image_embeds
    if net == "clip-text":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                num_hidden_layers=12, max_position_embeddings=77,
                                projection_dim=768)
        model = CLIPTextModelWithProjection(config).eval()
        ids = torch.randint(0, config.vocab_size - 2, (batch, 77))
        ids[:, -1] = config.vocab_size - 1
        return lambda: model(input_ids=ids).text_embeds
    if net == "dino":
        from transformers import ViTConfig, ViTModel

        # facebook/dino-vits16's config.
        config = ViTConfig(hidden_size=384, intermediate_size=1536, num_attention_heads=6,
                           num_hidden_layers=12, patch_size=16, image_size=224)
        model = ViTModel(config, add_pooling_layer=False).eval()
        x = torch.randn(batch, 3, 224, 224)
        return lambda: model(pixel_values=x).last_hidden_state[:, 0]
    if net == "inception":
        from pytorch_fid import inception as fid

        model = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        model.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        model.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        model.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        model.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        model.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        model.Mixed_7b = fid.FIDInceptionE_1(1280)
        model.Mixed_7c = fid.FIDInceptionE_2(2048)
        model.eval()
        x = torch.randn(batch, 3, 299, 299)
        return lambda: model(x)
    raise SystemExit(f"--net unet|clip-image|clip-text|dino|inception, not {net}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="unet")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch = a.batch or (2 if a.net == "unet" else 1)
    with torch.inference_mode():
        once = build(a.net, batch, a.latent)
        once()
        best, best_cpu = float("inf"), float("inf")
        for _ in range(a.rounds):
            s, c = time.perf_counter(), cpu_seconds()
            once()
            best = min(best, (time.perf_counter() - s) * 1e3)
            best_cpu = min(best_cpu, (cpu_seconds() - c) * 1e3)
    print(json.dumps({"net": a.net, "backend": f"torch-{torch.__version__}", "latent": a.latent,
                      "batch": batch, "rounds": a.rounds, "ms": round(best, 1), "cpu_ms": round(best_cpu),
                      "threads": a.threads}))


if __name__ == "__main__":
    main()
