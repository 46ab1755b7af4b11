#!/usr/bin/env python3
"""Golden parity fixtures for idforge-diffusion's Stable Diffusion port (diffusion/): two tiny
random-weight diffusers pipelines saved as folders, and what diffusers computes with them.

Usage (from the repository root):

    tools/diffusers-reference/run            # venv (once), then this script (~15 s, CPU)

or by hand, in a venv with requirements.txt installed:

    python tools/diffusers-reference/make_fixtures.py --vocab <bpe_simple_vocab_16e6.txt.gz>

(`tools/clip-reference/fetch-vocab` prints the vocabulary's path and fetches it if missing.)
No model hub is reached: every weight is random (seeded), every tokenizer is built here.

Writes diffusion/tests/fixtures/ (`--out DIR` writes elsewhere):

  tiny-sd/      a StableDiffusionPipeline folder from `save_pretrained(safe_serialization=True)`:
                model_index.json, unet/ (weights float16 on disk), vae/ (float32), text_encoder/
                (CLIPTextModel, float32), tokenizer/ (CLIPTokenizer, slow), scheduler/
                (DDIMScheduler, SD 1.5's config). safety_checker, feature_extractor and
                image_encoder are None, requires_safety_checker false.
  tiny-sdxl/    a StableDiffusionXLPipeline folder: unet/ (float16 on disk), vae/, text_encoder/
                (CLIPTextModel), text_encoder_2/ (CLIPTextModelWithProjection), tokenizer/,
                tokenizer_2/ (pads with "!"), scheduler/ (EulerDiscreteScheduler, SDXL's config).
  sd_parity.safetensors, sd_parity.json
  sdxl_parity.safetensors, sdxl_parity.json
                float32 inputs and outputs of the UNet, the VAE, the text encoders, the
                pipelines' encode_prompt and whole sampling loops (the keys, shapes and meaning
                are listed in each JSON's "tensors" and "notes"); the JSON holds the non-tensor
                data: prompts, token ids, timesteps, guidance, configs, versions.
  schedulers.safetensors, schedulers.json
                DDPM training quantities (alphas_cumprod, add_noise, get_velocity), DDIM and
                Euler set_timesteps for the three spacings, and chained step() sequences with
                fixed model outputs (epsilon, and v_prediction), on SD 1.5's betas.

Every reference value is computed in float32 on the CPU (one thread, deterministic algorithms)
by pipelines loaded back from the folders written here, so the float16-on-disk UNet weights are
exactly the ones a Rust loader reads. Re-running rewrites the same bytes on the same machine
(another CPU may differ in the last bits of the computed tensors; the folders' weights are
bit-identical anywhere, being drawn from torch's CPU generator).

The tiny configs are those of diffusers' own fast tests at v0.38.0:
tests/pipelines/stable_diffusion/test_stable_diffusion.py and
tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py, get_dummy_components (UNet,
text encoders and schedulers as there, the same torch.manual_seed(0) before each model).
Deviations:

  * Tokenizers. The tests load hf-internal-testing/tiny-random-clip (1000 ids) from the hub.
    Here a real CLIP BPE tokenizer is built instead, by CLIP's own vocabulary rule (the 256
    byte characters, the same with "</w>", the merged pairs, "<|startoftext|>",
    "<|endoftext|>") from the first 1000 - 512 - 2 = 486 merges of bpe_simple_vocab_16e6: ids
    0..255 bytes, 256..511 bytes + "</w>", 512..997 merges, 998 <|startoftext|>, 999
    <|endoftext|> (so "!" is 0). Its vocab.json / merges.txt are the format of the CLIP
    repositories on the hub. tokenizer pads with <|endoftext|> (SD 1.5's and SDXL's first
    tokenizer), tokenizer_2 with "!" (SDXL's second).
  * The text encoders keep the tests' bos_token_id 0, eos_token_id 2, pad_token_id 1 (as the
    real SD 1.5 / SDXL encoders do): eos_token_id == 2 selects transformers' legacy pooling,
    the hidden state at argmax(input_ids), which is the first <|endoftext|> (id 999, the
    largest) with both paddings.
  * SDXL's VAE. The test's AutoencoderKL (block_out_channels [32, 64], 32 groups) alone would be
    2.5 MB of float32 (658 k parameters), so it is narrowed to block_out_channels [8, 16], norm_num_groups 4,
    and given layers_per_block 2 (the real SD/SDXL VAE's, the test has the default 1) and
    SDXL's real scaling_factor 0.13025 (the test keeps the default 0.18215) so that the two
    fixture VAEs differ where real checkpoints differ. sample_size 128 as in the test.
    The SD VAE is the test's unchanged (block_out_channels [4, 8], norm_num_groups 2).
  * The SD scheduler is the test's DDIMScheduler plus steps_offset 1 (SD 1.5's
    scheduler_config.json; the test leaves the default 0).
  * The SDXL UNet is the test's unchanged (block_out_channels (2, 4), norm_num_groups 1); it
    is small enough.

The image size of both pipelines is unet.sample_size * 2 ** (len(vae.block_out_channels) - 1)
= 32 * 2 = 64 px, latents 4 x 32 x 32.
"""

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler,  # noqa: E402
                       EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (CLIPTextConfig, CLIPTextModel,  # noqa: E402
                          CLIPTextModelWithProjection, CLIPTokenizer)
from transformers.utils import logging as transformers_logging  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "diffusion/tests/fixtures"

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 1000
N_MERGES = VOCAB_SIZE - 512 - 2  # 486
MAX_LENGTH = 77

PROMPTS = ["a photo of a man wearing a red hat", ""]
LOOP_PROMPT = PROMPTS[0]
NEGATIVE_PROMPT = ""
GUIDANCE = 7.5
STEPS = 10
UNET_TIMESTEPS = [10, 999]

# SD 1.5's scheduler (scheduler_config.json of the v1-5 checkpoints).
SD15_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear")

NOTES_COMMON = [
    "All tensors float32, computed on the CPU in float32 from the weights as loaded back from "
    "the folder (UNet float16 on disk, upcast to float32).",
    "UNet2DConditionModel's `attention_head_dim` is the number of heads per block (legacy "
    "naming; diffusers sets num_attention_heads = attention_head_dim), head size = channels "
    "/ heads.",
    "CLIP text encoders: eos_token_id 2 in config.json selects the legacy pooling "
    "last_hidden_state[argmax(input_ids)], which is the first <|endoftext|> (id 999).",
    "text.penultimate_hidden_state is hidden_states[-2] (the output of the second-to-last "
    "encoder layer), with no final_layer_norm; text.last_hidden_state has final_layer_norm.",
    "vae.posterior_mean / vae.posterior_logvar: quant_conv(encoder(image)) split in two along "
    "channels (first half mean), logvar clamped to [-30, 20]. vae.decoded = "
    "decoder(post_quant_conv(vae.decode_input)), no scaling_factor applied.",
]


def log(msg):
    print(f"diffusers-reference: {msg}", file=sys.stderr, flush=True)


def versions():
    out = {}
    for name in ["diffusers", "torch", "transformers", "tokenizers", "safetensors", "numpy",
                 "ftfy"]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float32)


def rand_uniform(seed, lo, hi, *shape):
    u = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return lo + (hi - lo) * u


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def to_json(obj, indent=0):
    """json.dumps(indent=1), except that lists of scalars stay on one line."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {to_json(v, indent + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in obj) + "]"
        items = [pad + to_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def dump_json(path, obj):
    text = to_json(obj) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj))
    path.write_text(text)


def save_tensors(path, tensors):
    tensors = {k: f32(v) for k, v in tensors.items()}
    for k, v in tensors.items():
        assert torch.isfinite(v).all(), k
    save_file(tensors, str(path))
    return {k: list(v.shape) for k, v in sorted(tensors.items())}


# --------------------------------------------------------------------------------------------
# Tokenizer


def byte_to_unicode_table():
    """CLIP's (GPT-2's) reversible byte -> printable character table, in CLIP's order: the
    printable Latin-1 bytes map to themselves first, then the other bytes to U+0100 + n."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def write_tiny_vocab(vocab_gz, folder):
    raw = Path(vocab_gz).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != VOCAB_SHA256:
        raise SystemExit(f"{vocab_gz}: sha256 {digest}, expected {VOCAB_SHA256}")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1:1 + N_MERGES]  # line 0 is the "#version" header
    assert all(len(m.split(" ")) == 2 for m in merges)
    chars = byte_to_unicode_table()
    vocab = chars + [c + "</w>" for c in chars]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE == len(set(vocab)), len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def make_tokenizer(vocab_file, merges_file, pad_token):
    tok = CLIPTokenizer(vocab_file=str(vocab_file), merges_file=str(merges_file),
                        unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                        eos_token="<|endoftext|>", pad_token=pad_token,
                        model_max_length=MAX_LENGTH)
    assert len(tok) == VOCAB_SIZE, len(tok)
    assert tok.convert_tokens_to_ids("<|startoftext|>") == 998
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 999
    return tok


def token_ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
               return_tensors="pt").input_ids


# --------------------------------------------------------------------------------------------
# Models (diffusers' fast-test configs, see the docstring)


def sd_components(vocab_file, merges_file):
    cross_attention_dim = 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=2)
    scheduler = DDIMScheduler(**SD15_BETAS, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=cross_attention_dim, intermediate_size=16,
        layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2, pad_token_id=1,
        vocab_size=VOCAB_SIZE))
    tokenizer = make_tokenizer(vocab_file, merges_file, pad_token="<|endoftext|>")
    return dict(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                image_encoder=None, requires_safety_checker=False)


def sdxl_components(vocab_file, merges_file):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
        timestep_spacing="leading")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        layers_per_block=2, norm_num_groups=4, sample_size=128, scaling_factor=0.13025)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
        vocab_size=VOCAB_SIZE, hidden_act="gelu", projection_dim=32)
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    tokenizer = make_tokenizer(vocab_file, merges_file, pad_token="<|endoftext|>")
    tokenizer_2 = make_tokenizer(vocab_file, merges_file, pad_token="!")
    return dict(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True)


def save_pipeline(pipeline_cls, components, folder):
    pipe = pipeline_cls(**components)
    pipe.unet.to(torch.float16)  # the UNet is stored in float16, the rest in float32
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    loaded = pipeline_cls.from_pretrained(str(folder), torch_dtype=torch.float32)
    loaded.set_progress_bar_config(disable=True)
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        model = getattr(loaded, name, None)
        if model is None:
            continue
        model.eval()
        for p in model.parameters():
            assert p.dtype == torch.float32, name
    # The float16 round trip: the loaded UNet holds exactly the float16 values.
    for (k, a), (_, b) in zip(sorted(pipe.unet.state_dict().items()),
                              sorted(loaded.unet.state_dict().items())):
        assert a.dtype == torch.float16 and torch.equal(a.float(), b), k
    return loaded


def folder_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# Shared model-level references


def unet_vae_refs(pipe, t, seed, added_cond=None):
    unet, vae = pipe.unet, pipe.vae
    size = unet.config.sample_size
    cad = unet.config.cross_attention_dim
    sample = randn(seed + 1, 2, 4, size, size)
    timestep = torch.tensor(UNET_TIMESTEPS, dtype=torch.int64)
    ehs = randn(seed + 2, 2, MAX_LENGTH, cad)
    kwargs = {}
    if added_cond is not None:
        kwargs["added_cond_kwargs"] = added_cond
    out = unet(sample, timestep, encoder_hidden_states=ehs, return_dict=False, **kwargs)[0]
    t["unet.sample"] = sample
    t["unet.timestep"] = timestep.float()
    t["unet.encoder_hidden_states"] = ehs
    t["unet.out"] = out

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image = rand_uniform(seed + 3, -1.0, 1.0, 1, 3, size * factor, size * factor)
    posterior = vae.encode(image).latent_dist
    z = randn(seed + 4, 1, 4, size, size)
    t["vae.image"] = image
    t["vae.posterior_mean"] = posterior.mean
    t["vae.posterior_logvar"] = posterior.logvar
    t["vae.decode_input"] = z
    t["vae.decoded"] = vae.decode(z).sample
    return {"scaling_factor": vae.config.scaling_factor, "downsampling_factor": factor,
            "image_size": size * factor, "latent_size": size, "logvar_clamp": [-30.0, 20.0]}


def text_refs(t, prefix, tokenizer, encoder, with_projection=False):
    ids = token_ids(tokenizer, PROMPTS)
    inner = encoder.text_model
    out = inner(ids, output_hidden_states=True)
    t[f"{prefix}.last_hidden_state"] = out.last_hidden_state
    t[f"{prefix}.penultimate_hidden_state"] = out.hidden_states[-2]
    t[f"{prefix}.pooled"] = out.pooler_output
    if with_projection:
        t[f"{prefix}.text_embeds"] = encoder(ids).text_embeds
    eot = [row.index(999) for row in ids.tolist()]
    assert eot == ids.argmax(-1).tolist()
    return {"prompts": PROMPTS, "token_ids": ids.tolist(), "pooled_position": eot,
            "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
            "tokens": [tokenizer.convert_ids_to_tokens(r[:r.index(999) + 1])
                       for r in ids.tolist()]}


def scheduler_info(s):
    return {"class": type(s).__name__, "config": {k: v for k, v in s.config.items()
                                                   if not k.startswith("_")},
            "timesteps": s.timesteps.tolist(), "timesteps_dtype": str(s.timesteps.dtype)}


# --------------------------------------------------------------------------------------------
# The float64 rerun: how far float32 is from the exact result, to size the Rust tolerances


def max_abs_diff(a, b):
    return float(f"{(a.double() - b.double()).abs().max().item():.3g}")


@torch.no_grad()
def float64_rerun(pipeline_cls, folder, t, meta, loops):
    """Recomputes the main outputs with every weight and input in float64 (the weights are the
    same values) and returns max |float32 reference - float64| per key. diffusers keeps a few
    things in float32 even then (the sinusoidal timestep embedding before its cast, Euler's
    step), so this is the float32 error of the network, not of the schedulers."""
    pipe = pipeline_cls.from_pretrained(str(folder), torch_dtype=torch.float64)
    pipe.set_progress_bar_config(disable=True)
    d = {k: v.double() for k, v in t.items()}
    res = {}
    kwargs = {}
    if "unet.time_ids" in t:
        kwargs["added_cond_kwargs"] = {"text_embeds": d["unet.text_embeds"],
                                       "time_ids": d["unet.time_ids"]}
    out = pipe.unet(d["unet.sample"], t["unet.timestep"].long(),
                    encoder_hidden_states=d["unet.encoder_hidden_states"], return_dict=False,
                    **kwargs)[0]
    res["unet.out"] = max_abs_diff(out, t["unet.out"])
    posterior = pipe.vae.encode(d["vae.image"]).latent_dist
    res["vae.posterior_mean"] = max_abs_diff(posterior.mean, t["vae.posterior_mean"])
    res["vae.posterior_logvar"] = max_abs_diff(posterior.logvar, t["vae.posterior_logvar"])
    res["vae.decoded"] = max_abs_diff(pipe.vae.decode(d["vae.decode_input"]).sample,
                                      t["vae.decoded"])
    for prefix, enc in [("text", pipe.text_encoder),
                        ("text_2", getattr(pipe, "text_encoder_2", None))]:
        if enc is None:
            continue
        ids = torch.tensor(meta[prefix]["token_ids"])
        # transformers builds CLIP's causal mask with torch.full in the default dtype.
        torch.set_default_dtype(torch.float64)
        try:
            o = enc.text_model(ids, output_hidden_states=True)
        finally:
            torch.set_default_dtype(torch.float32)
        res[f"{prefix}.last_hidden_state"] = max_abs_diff(o.last_hidden_state,
                                                          t[f"{prefix}.last_hidden_state"])
        res[f"{prefix}.penultimate_hidden_state"] = max_abs_diff(
            o.hidden_states[-2], t[f"{prefix}.penultimate_hidden_state"])
        res[f"{prefix}.pooled"] = max_abs_diff(o.pooler_output, t[f"{prefix}.pooled"])
    for key, scheduler, kw in loops:
        saved = pipe.scheduler
        if scheduler is not None:
            pipe.scheduler = scheduler.from_config(saved.config)
        kw = {k: (d[v] if isinstance(v, str) else v) for k, v in kw.items()}
        final = pipe(output_type="latent", **kw).images
        res[key] = max_abs_diff(final, t[key])
        pipe.scheduler = saved
    return res


# --------------------------------------------------------------------------------------------
# SD


@torch.no_grad()
def sd_fixtures(out, vocab_file, merges_file):
    folder = out / "tiny-sd"
    pipe = save_pipeline(StableDiffusionPipeline, sd_components(vocab_file, merges_file),
                         folder)
    t = {}
    meta = {"versions": versions(), "folder": "tiny-sd", "files": folder_files(folder)}
    meta["vae"] = unet_vae_refs(pipe, t, seed=100)
    meta["unet"] = {"timesteps": UNET_TIMESTEPS,
                    "note": "unet.timestep is stored as float32; the call got int64 [10, 999]"}
    meta["text"] = text_refs(t, "text", pipe.tokenizer, pipe.text_encoder)

    cond, uncond = pipe.encode_prompt(LOOP_PROMPT, "cpu", 1, True, negative_prompt=None)
    t["prompt_embeds"] = cond
    t["negative_prompt_embeds"] = uncond
    assert torch.equal(cond[0], t["text.last_hidden_state"][0])
    assert torch.equal(uncond[0], t["text.last_hidden_state"][1])
    meta["encode_prompt"] = {
        "prompt": LOOP_PROMPT, "negative_prompt": None,
        "note": "negative_prompt None encodes \"\"; prompt_embeds = last_hidden_state "
                "(clip_skip None), no attention mask"}

    size = pipe.unet.config.sample_size
    image_size = size * pipe.vae_scale_factor
    noise = randn(200, 1, 4, size, size)
    t["loop.ddim.noise"] = noise
    t["loop.euler.noise"] = noise
    t["loop.cond"] = cond
    t["loop.uncond"] = uncond
    common = dict(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=GUIDANCE,
                  num_inference_steps=STEPS, height=image_size, width=image_size)
    loop = {"guidance_scale": GUIDANCE, "num_inference_steps": STEPS, "eta": 0.0,
            "height": image_size, "width": image_size, "prompt": LOOP_PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "cfg": "unet on cat([uncond, cond]) latents twice; noise_pred = uncond + g * "
                   "(cond - uncond)"}

    # DDIM (the folder's scheduler)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    latents = pipe(latents=noise.clone(), output_type="latent", **common).images
    t["loop.ddim.final"] = latents
    loop["ddim"] = scheduler_info(pipe.scheduler)
    loop["ddim"]["init_noise_sigma"] = float(pipe.scheduler.init_noise_sigma)
    image = pipe(latents=noise.clone(), output_type="pt", **common).images
    t["loop.ddim.image"] = image
    assert torch.equal(
        image, (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5)
        .clamp(0, 1))
    loop["ddim"]["image"] = ("vae.decode(final / scaling_factor), then (x / 2 + 0.5)"
                             ".clamp(0, 1): output_type \"pt\"")

    # Euler, from the DDIM config (leading, steps_offset 1), as from_config swaps schedulers
    ddim = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(ddim.config)
    latents = pipe(latents=noise.clone(), output_type="latent", **common).images
    t["loop.euler.final"] = latents
    loop["euler"] = scheduler_info(pipe.scheduler)
    loop["euler"]["sigmas"] = pipe.scheduler.sigmas.tolist()
    sigma0 = float(pipe.scheduler.init_noise_sigma)
    loop["euler"]["init_noise_sigma"] = sigma0
    loop["euler"]["note"] = (
        "the pipeline multiplies the given latents by init_noise_sigma after set_timesteps: "
        "leading spacing -> sqrt(max(sigmas)^2 + 1); each UNet input is scale_model_input = "
        "x / sqrt(sigma^2 + 1); timesteps are float32")
    pipe.scheduler = ddim
    meta["loop"] = loop

    meta["tensors"] = save_tensors(out / "sd_parity.safetensors", t)
    loop_kw = dict(latents="loop.ddim.noise", prompt_embeds="loop.cond",
                   negative_prompt_embeds="loop.uncond", guidance_scale=GUIDANCE,
                   num_inference_steps=STEPS, height=image_size, width=image_size)
    meta["float64_rerun_max_abs_diff"] = float64_rerun(
        StableDiffusionPipeline, folder, t, meta,
        [("loop.ddim.final", None, loop_kw),
         ("loop.euler.final", EulerDiscreteScheduler, loop_kw)])
    meta["notes"] = NOTES_COMMON
    dump_json(out / "sd_parity.json", meta)
    return meta


# --------------------------------------------------------------------------------------------
# SDXL


@torch.no_grad()
def sdxl_fixtures(out, vocab_file, merges_file):
    folder = out / "tiny-sdxl"
    pipe = save_pipeline(StableDiffusionXLPipeline,
                         sdxl_components(vocab_file, merges_file), folder)
    t = {}
    meta = {"versions": versions(), "folder": "tiny-sdxl", "files": folder_files(folder)}
    proj = pipe.text_encoder_2.config.projection_dim
    text_embeds = randn(301, 2, proj)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
                             [1024.0, 768.0, 16.0, 32.0, 896.0, 1152.0]])
    t["unet.text_embeds"] = text_embeds
    t["unet.time_ids"] = time_ids
    meta["vae"] = unet_vae_refs(pipe, t, seed=300,
                                added_cond={"text_embeds": text_embeds, "time_ids": time_ids})
    meta["unet"] = {
        "timesteps": UNET_TIMESTEPS,
        "time_ids_layout": "original_size (h, w) + crops_coords_top_left (top, left) + "
                           "target_size (h, w)",
        "added_embedding": "add_embedding(cat([text_embeds, flatten_per_row(add_time_proj("
                           "time_ids.flatten()))], -1)) added to the time embedding; "
                           "add_time_proj = Timesteps(addition_time_embed_dim=8, "
                           "flip_sin_to_cos=True, shift=0) on each of the 6 numbers"}
    meta["text"] = text_refs(t, "text", pipe.tokenizer, pipe.text_encoder)
    meta["text_2"] = text_refs(t, "text_2", pipe.tokenizer_2, pipe.text_encoder_2,
                               with_projection=True)

    pe, npe, ppe, nppe = pipe.encode_prompt(LOOP_PROMPT, device="cpu",
                                            num_images_per_prompt=1,
                                            do_classifier_free_guidance=True,
                                            negative_prompt=NEGATIVE_PROMPT)
    t["prompt_embeds"] = pe
    t["negative_prompt_embeds"] = npe
    t["pooled_prompt_embeds"] = ppe
    t["negative_pooled_prompt_embeds"] = nppe
    assert torch.equal(pe[0], torch.cat([t["text.penultimate_hidden_state"][0],
                                         t["text_2.penultimate_hidden_state"][0]], -1))
    assert torch.allclose(ppe[0], t["text_2.text_embeds"][0], rtol=0, atol=1e-6)
    _, z1, _, z2 = pipe.encode_prompt(LOOP_PROMPT, device="cpu", num_images_per_prompt=1,
                                      do_classifier_free_guidance=True, negative_prompt=None)
    assert not z1.any() and not z2.any()
    meta["encode_prompt"] = {
        "prompt": LOOP_PROMPT, "prompt_2": None, "negative_prompt": NEGATIVE_PROMPT,
        "force_zeros_for_empty_prompt": True,
        "note": "prompt_embeds = cat([text.penultimate_hidden_state, "
                "text_2.penultimate_hidden_state], -1) (no final_layer_norm); pooled = "
                "text_2.text_embeds; prompt_2 None means prompt. With negative_prompt None "
                "(not \"\") and force_zeros_for_empty_prompt, both negative tensors are zeros "
                "(checked); with \"\" they are the encodings of \"\" as stored."}

    size = pipe.unet.config.sample_size
    image_size = size * pipe.vae_scale_factor
    noise = randn(400, 1, 4, size, size)
    t["loop.sdxl.noise"] = noise
    common = dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                  negative_pooled_prompt_embeds=nppe, guidance_scale=GUIDANCE,
                  num_inference_steps=STEPS, height=image_size, width=image_size,
                  original_size=(image_size, image_size), target_size=(image_size, image_size),
                  crops_coords_top_left=(0, 0))
    captured = {}

    def grab(_pipe, i, _t, kw):
        if i == 0:
            captured.update({k: v.clone() for k, v in kw.items()})
        return {}

    latents = pipe(latents=noise.clone(), output_type="latent", callback_on_step_end=grab,
                   callback_on_step_end_tensor_inputs=["add_text_embeds", "add_time_ids"],
                   **common).images
    t["loop.sdxl.final"] = latents
    t["loop.sdxl.time_ids"] = captured["add_time_ids"]
    t["loop.sdxl.text_embeds"] = captured["add_text_embeds"]
    assert torch.equal(captured["add_text_embeds"], torch.cat([nppe, ppe]))
    image = pipe(latents=noise.clone(), output_type="pt", **common).images
    t["loop.sdxl.image"] = image
    loop = scheduler_info(pipe.scheduler)
    loop.update({
        "guidance_scale": GUIDANCE, "num_inference_steps": STEPS, "height": image_size,
        "width": image_size, "original_size": [image_size, image_size],
        "crops_coords_top_left": [0, 0], "target_size": [image_size, image_size],
        "time_ids": captured["add_time_ids"].tolist(),
        "sigmas": pipe.scheduler.sigmas.tolist(),
        "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
        "prompt": LOOP_PROMPT, "negative_prompt": NEGATIVE_PROMPT,
        "note": "embeddings are prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, "
                "negative_pooled_prompt_embeds; the UNet gets cat([negative, positive]) for "
                "encoder_hidden_states and text_embeds (loop.sdxl.text_embeds) and "
                "loop.sdxl.time_ids (negative row first, equal rows here); latents = noise * "
                "init_noise_sigma; loop.sdxl.image = (vae.decode(final / 0.13025) / 2 + "
                "0.5).clamp(0, 1)"})
    meta["loop"] = loop

    meta["tensors"] = save_tensors(out / "sdxl_parity.safetensors", t)
    loop_kw = dict(common, latents="loop.sdxl.noise", prompt_embeds="prompt_embeds",
                   negative_prompt_embeds="negative_prompt_embeds",
                   pooled_prompt_embeds="pooled_prompt_embeds",
                   negative_pooled_prompt_embeds="negative_pooled_prompt_embeds")
    meta["float64_rerun_max_abs_diff"] = float64_rerun(
        StableDiffusionXLPipeline, folder, t, meta, [("loop.sdxl.final", None, loop_kw)])
    meta["notes"] = NOTES_COMMON
    dump_json(out / "sdxl_parity.json", meta)
    return meta


# --------------------------------------------------------------------------------------------
# Schedulers


def step_sequence(t, prefix, scheduler, sample0, model_outputs, euler=False):
    sample = sample0.clone()
    t[f"{prefix}.sample0"] = sample
    seq = []
    for i, ts in enumerate(scheduler.timesteps):
        if euler:
            t[f"{prefix}.step.{i}.scaled"] = scheduler.scale_model_input(sample, ts)
            out = scheduler.step(model_outputs[i], ts, sample)
        else:
            out = scheduler.step(model_outputs[i], ts, sample, eta=0.0)
        t[f"{prefix}.step.{i}.prev_sample"] = out.prev_sample
        t[f"{prefix}.step.{i}.pred_original_sample"] = out.pred_original_sample
        seq.append(ts.item())
        sample = out.prev_sample
    return seq


@torch.no_grad()
def scheduler_fixtures(out):
    t = {}
    meta = {"versions": versions(), "betas": SD15_BETAS}

    ddpm = DDPMScheduler(**SD15_BETAS)
    t["ddpm.betas"] = ddpm.betas
    t["ddpm.alphas_cumprod"] = ddpm.alphas_cumprod
    ts = [0, 10, 500, 999]
    x0 = randn(500, len(ts), 4, 8, 8)
    noise = randn(501, len(ts), 4, 8, 8)
    tt = torch.tensor(ts, dtype=torch.int64)
    t["ddpm.x0"] = x0
    t["ddpm.noise"] = noise
    t["ddpm.noisy"] = ddpm.add_noise(x0, noise, tt)
    t["ddpm.v_target"] = ddpm.get_velocity(x0, noise, tt)
    meta["ddpm"] = {
        "config": {k: v for k, v in ddpm.config.items() if not k.startswith("_")},
        "t": ts,
        "note": "betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, float32)^2; alphas_cumprod "
                "= cumprod(1 - betas) in float32; noisy = sqrt(ac[t]) x0 + sqrt(1 - ac[t]) "
                "noise; v_target = sqrt(ac[t]) noise - sqrt(1 - ac[t]) x0 (row i uses t[i])"}

    model_outputs = [randn(600 + i, 1, 4, 8, 8) for i in range(STEPS)]
    for i, m in enumerate(model_outputs):
        t[f"steps.model_output.{i}"] = m
    sample = randn(599, 1, 4, 8, 8)
    t["steps.sample"] = sample

    ddim_base = dict(SD15_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    meta["ddim"] = {"num_inference_steps": STEPS, "eta": 0.0, "spacings": {}}
    for spacing in ["leading", "trailing", "linspace"]:
        s = DDIMScheduler(**ddim_base, timestep_spacing=spacing)
        s.set_timesteps(STEPS)
        prefix = "ddim" if spacing == "leading" else f"ddim.{spacing}"
        info = scheduler_info(s)
        info["prefix"] = prefix
        info["prev_timesteps"] = [int(x) - 1000 // STEPS for x in s.timesteps]
        step_sequence(t, prefix, s, sample, model_outputs)
        meta["ddim"]["spacings"][spacing] = info
    s = DDIMScheduler(**ddim_base, prediction_type="v_prediction")
    s.set_timesteps(STEPS)
    step_sequence(t, "ddim.vpred", s, sample, model_outputs)
    meta["ddim"]["vpred"] = scheduler_info(s)
    meta["ddim"]["vpred"]["prefix"] = "ddim.vpred"
    meta["ddim"]["final_alpha_cumprod"] = float(s.final_alpha_cumprod)
    meta["ddim"]["note"] = (
        "chained: sample_0 = steps.sample, sample_{i+1} = step(steps.model_output.{i}, "
        "timesteps[i], sample_i).prev_sample; prev timestep is always t - 1000 // steps "
        "(also for linspace, whose next timestep differs), alphas_cumprod[prev] or "
        "final_alpha_cumprod = alphas_cumprod[0] (set_alpha_to_one false) when prev < 0; "
        "steps_offset only applies to leading")

    meta["euler"] = {"num_inference_steps": STEPS, "s_churn": 0.0, "spacings": {}}
    euler_base = dict(SD15_BETAS, steps_offset=1)
    for spacing in ["leading", "trailing", "linspace"]:
        s = EulerDiscreteScheduler(**euler_base, timestep_spacing=spacing)
        s.set_timesteps(STEPS)
        prefix = "euler" if spacing == "leading" else f"euler.{spacing}"
        info = scheduler_info(s)
        info["prefix"] = prefix
        info["sigmas"] = s.sigmas.tolist()
        info["init_noise_sigma"] = float(s.init_noise_sigma)
        t[f"{prefix}.sigmas"] = s.sigmas
        t[f"{prefix}.timesteps"] = s.timesteps
        step_sequence(t, prefix, s, sample * s.init_noise_sigma, model_outputs, euler=True)
        meta["euler"]["spacings"][spacing] = info
    s = EulerDiscreteScheduler(**euler_base, timestep_spacing="leading",
                               prediction_type="v_prediction")
    s.set_timesteps(STEPS)
    step_sequence(t, "euler.vpred", s, sample * s.init_noise_sigma, model_outputs, euler=True)
    meta["euler"]["vpred"] = scheduler_info(s)
    meta["euler"]["vpred"]["prefix"] = "euler.vpred"
    meta["euler"]["vpred"]["init_noise_sigma"] = float(s.init_noise_sigma)
    meta["euler"]["note"] = (
        "chained as DDIM's, from sample0 = steps.sample * init_noise_sigma; step.{i}.scaled = "
        "scale_model_input(sample_i, t_i) = sample_i / sqrt(sigma_i^2 + 1) (what the UNet "
        "would see; step() takes the unscaled sample); epsilon: x0 = x - sigma eps; "
        "v_prediction: x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1); prev = x + "
        "(x - x0) / sigma * (sigma_next - sigma); sigmas = sqrt((1 - ac) / ac) at the "
        "timesteps (float32), then a final 0; init_noise_sigma = sqrt(max sigma^2 + 1) for "
        "leading, max sigma for trailing and linspace")

    meta["tensors"] = save_tensors(out / "schedulers.safetensors", t)
    dump_json(out / "schedulers.json", meta)
    return meta


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab", type=Path, default=None,
                    help="bpe_simple_vocab_16e6.txt.gz (default: $IDFORGE_CACHE/clip/...)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/idforge-diffusers-reference"))
    args = ap.parse_args()

    vocab = args.vocab
    if vocab is None:
        cache = os.environ.get("IDFORGE_CACHE") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "idforge")
        vocab = Path(cache) / "clip/bpe_simple_vocab_16e6.txt.gz"
    if not vocab.is_file():
        raise SystemExit(f"{vocab} is missing: run tools/clip-reference/fetch-vocab")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = write_tiny_vocab(vocab, args.work / "tokenizer")

    tok = make_tokenizer(vocab_file, merges_file, pad_token="<|endoftext|>")
    ids = token_ids(tok, PROMPTS[:1])[0].tolist()
    log(f"{PROMPTS[0]!r} -> {tok.convert_ids_to_tokens(ids[:ids.index(999) + 1])}")

    log("schedulers")
    scheduler_fixtures(args.out)
    log("tiny SD")
    sd_fixtures(args.out, vocab_file, merges_file)
    log("tiny SDXL")
    sdxl_fixtures(args.out, vocab_file, merges_file)

    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"diffusers-reference: wrote {args.out} ({total} bytes, {total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
