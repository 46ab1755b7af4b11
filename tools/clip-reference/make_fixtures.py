#!/usr/bin/env python3
"""Golden fixtures for idforge's CLIP (models/src/clip/): tokenizer ids, preprocessing, tiny
random-weight models in both weight layouts, and the full-size checkpoints' state-dict keys.

Usage (from the repository root; see README.md beside this file):

    tools/clip-reference/fetch-vocab                     # CLIP's BPE vocabulary into the cache
    python3 -m venv .venv-clip
    .venv-clip/bin/pip install --only-binary=:all: -r tools/clip-reference/requirements.txt
    .venv-clip/bin/python tools/clip-reference/make_fixtures.py

Writes models/tests/fixtures/clip/:

  tokenizer_ids.json   prompts and their 77 ids from transformers' CLIPTokenizerFast and
                       CLIPTokenizer (the slow one, with ftfy), and open_clip.tokenize, all on
                       the full 49 408-id vocabulary (which is not committed: the Rust test
                       reads it from the cache).
  tiny_tokenizer.json  a Hugging Face tokenizer.json of the first 510 merges only (1 024 ids:
                       `<|startoftext|>` 1022, `<|endoftext|>` 1023), as transformers converts
                       it; the tiny text towers use this vocabulary.
  tiny_<name>.safetensors
                       four tiny CLIPs with every parameter random (seeded): text width 32,
                       4 heads, 3 layers, MLP 64, 77 positions; vision 32 px, patch 8, width
                       48, 4 heads, 3 layers, MLP 96; both projections to 24.
                         hf_quickgelu   transformers CLIPModel, quick_gelu, eos_token_id 2
                                        (argmax pooling), float32
                         hf_gelu        transformers CLIPModel, gelu, eos_token_id 1023 (first
                                        end-of-text pooling), float16
                         openclip_quickgelu  open_clip CLIP, QuickGELU, bfloat16
                         openclip_gelu  open_clip CLIP, nn.GELU, float32
                       The references run in float32 on the weights as stored.
  tiny_hf_*.config.json  transformers' config.json of the two HF models.
  inputs.json          the prompts of the model tests and their ids from the tiny tokenizer,
                       padded with <|endoftext|> (HF) and with 0 (open_clip); the image names.
  inputs.safetensors   the 32 px pixel tensors of each preprocessing, and a random one.
  outputs_<name>.safetensors
                       per model: text embeds (before L2 normalisation), pooled, last hidden
                       state, penultimate hidden state; the same for images.
  preprocess.json      per source image, size (224, 32) and library: the size after the
                       resize, sha256 of the 8-bit resized and centre-cropped RGB, and the sum
                       and sum of squares of the normalised tensor.
  images/*.png         the source images (two face-api sample photos and crops of them at
                       sizes that make the two libraries' centre crops differ).
  keys_<preset>.json   names and shapes of the state dicts of the full-size presets in both
                       layouts, built on the meta device (no weights).
"""

import argparse
import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import PIL
import safetensors
import tokenizers
import torch
import transformers
from open_clip.tokenizer import bytes_to_unicode
from PIL import Image
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig,
                          CLIPTextModelWithProjection, CLIPTokenizer, CLIPTokenizerFast,
                          CLIPVisionConfig, CLIPVisionModelWithProjection)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "models/tests/fixtures/clip"
FACE_API = ROOT / "models/tests/fixtures/face-api"

MERGES = 49152 - 256 - 2
TINY_MERGES = 510

PROMPTS = [
    "a photo of a cat",
    "A PHOTO OF A DOG",
    "",
    "   leading and trailing   whitespace\t\nand  tabs   ",
    "portrait of a woman, 35mm, f/1.8, bokeh, (masterpiece:1.2), [[best quality]], 8k!!!",
    "it's a man's world; they're sure we'll see what you'd've done",
    "Tom &amp; Jerry &lt;3 &#x2019;quotes&#8217; &copy; 2024",
    "\u201cCurly\u201d \u2018quotes\u2019 and \ufb01ne \ufb02ower ligatures",
    "\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33 fullwidth",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 co\u00f6perate \u00dcber stra\u00dfe",
    "cafe\u0301 with a combining accent",
    "\u6771\u4eac\u306e\u591c\u666f \u5199\u771f \ud55c\uad6d\uc5b4 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0639\u0631\u0628\u064a",
    "emoji \U0001f600\U0001f408\u200d\u2b1b \U0001f44d\U0001f3fd flags \U0001f1ef\U0001f1f5",
    "!!!???...,,,;;;:::---___***###@@@$$$%%%^^^&&&(((])))",
    "numbers 1234567890 3.14159 1,000,000 2nd 3rd 21st",
    "a\u0085b\u00a0c\u2028d",
    " ".join(["a very long prompt that goes on and on"] * 12),
    "photo of sks person, " * 20,
]


def vocab_lines(path):
    text = gzip.open(path).read().decode("utf-8")
    return text.split("\n")[1:MERGES + 1]


def write_hf_vocab(merges, folder):
    """vocab.json and merges.txt as Hugging Face's CLIP repositories hold them."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def tokenizer_fixtures(vocab_path, work):
    merges = vocab_lines(vocab_path)
    write_hf_vocab(merges, work / "full")
    fast = CLIPTokenizerFast(vocab_file=str(work / "full/vocab.json"),
                             merges_file=str(work / "full/merges.txt"))
    slow = CLIPTokenizer(vocab_file=str(work / "full/vocab.json"),
                         merges_file=str(work / "full/merges.txt"))
    kw = dict(padding="max_length", max_length=77, truncation=True)
    oc = open_clip.tokenize(PROMPTS).tolist()
    result = {
        "versions": versions(),
        "vocab_sha256": hashlib.sha256(Path(vocab_path).read_bytes()).hexdigest(),
        "prompts": [
            {"text": p, "hf_fast": fast(p, **kw).input_ids, "hf_slow": slow(p, **kw).input_ids,
             "open_clip": oc[i]}
            for i, p in enumerate(PROMPTS)
        ],
    }
    differ = [p["text"] for p in result["prompts"] if p["hf_fast"] != p["open_clip"]]
    print(f"tokenizers: {len(differ)} of {len(PROMPTS)} prompts differ between HF fast and "
          f"open_clip (cleaning or padding)")
    dump_json(OUT / "tokenizer_ids.json", result)

    # The tiny vocabulary: the first TINY_MERGES merges.
    n = write_hf_vocab(merges[:TINY_MERGES], work / "tiny")
    assert n == 1024, n
    tiny = CLIPTokenizerFast(vocab_file=str(work / "tiny/vocab.json"),
                             merges_file=str(work / "tiny/merges.txt"))
    tiny.save_pretrained(work / "tiny/saved")
    data = json.loads((work / "tiny/saved/tokenizer.json").read_text())
    dump_json(OUT / "tiny_tokenizer.json", data)
    return tiny


def dump_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "open_clip": open_clip.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__}


# ---------------------------------------------------------------------------------------------
# Tiny models.

TEXT = dict(width=32, heads=4, layers=3, mlp=64, vocab=1024, ctx=77)
VISION = dict(image=32, patch=8, width=48, heads=4, layers=3, mlp=96)
EMBED = 24


def hf_model(act, eos):
    cfg = CLIPConfig(
        text_config=dict(vocab_size=TEXT["vocab"], hidden_size=TEXT["width"],
                         intermediate_size=TEXT["mlp"], num_hidden_layers=TEXT["layers"],
                         num_attention_heads=TEXT["heads"], max_position_embeddings=TEXT["ctx"],
                         hidden_act=act, bos_token_id=1022, eos_token_id=eos, pad_token_id=1023),
        vision_config=dict(image_size=VISION["image"], patch_size=VISION["patch"],
                           hidden_size=VISION["width"], intermediate_size=VISION["mlp"],
                           num_hidden_layers=VISION["layers"],
                           num_attention_heads=VISION["heads"], hidden_act=act),
        projection_dim=EMBED)
    cfg._attn_implementation = "eager"
    return CLIPModel(cfg).eval()


def openclip_model(quick_gelu):
    vision = dict(image_size=VISION["image"], patch_size=VISION["patch"],
                  width=VISION["width"], layers=VISION["layers"],
                  head_width=VISION["width"] // VISION["heads"],
                  mlp_ratio=VISION["mlp"] / VISION["width"])
    text = dict(context_length=TEXT["ctx"], vocab_size=TEXT["vocab"], width=TEXT["width"],
                heads=TEXT["heads"], layers=TEXT["layers"], mlp_ratio=TEXT["mlp"] / TEXT["width"])
    return open_clip.model.CLIP(EMBED, vision, text, quick_gelu=quick_gelu).eval()


def randomize(model, seed):
    """Every parameter random: matrices N(0, 1/fan_in), LayerNorm scales 1 + N(0, 0.1²),
    biases and shifts N(0, 0.05²), token embeddings N(0, 0.5²), class and position embeddings
    N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(math.log(1 / 0.07))
            elif p.ndim == 1 and ("ln" in name or "norm" in name or "layrnorm" in name) \
                    and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and "class_embedding" not in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "token_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "embedding" in name and p.ndim <= 2:
                # Class and position embeddings: small next to the patches, so that different
                # images get different embeddings.
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("text_projection") or name.endswith("visual.proj"):
                # open_clip's `x @ proj`: the input dimension comes first.
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[0]))
            else:
                # Linear [out, in], packed in_proj [3·w, w], Conv2d [out, in, k, k].
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def round_to(model, dtype):
    """The weights as the file will hold them, back in float32 for the reference run."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def hf_outputs(model, ids, pixels):
    with torch.no_grad():
        t = model.text_model(input_ids=ids, output_hidden_states=True)
        v = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        return {
            "text_embeds": model.text_projection(t.pooler_output),
            "text_pooled": t.pooler_output,
            "text_last_hidden_state": t.last_hidden_state,
            "text_penultimate_hidden_state": t.hidden_states[-2],
            "image_embeds": model.visual_projection(v.pooler_output),
            "image_pooled": v.pooler_output,
            "image_last_hidden_state": v.last_hidden_state,
            "image_penultimate_hidden_state": v.hidden_states[-2],
        }


def openclip_outputs(model, ids, pixels):
    seen = {}

    def keep(key):
        def hook(_module, _inputs, output):
            seen[key] = output
        return hook

    hooks = [
        model.transformer.resblocks[-2].register_forward_hook(keep("text_penultimate")),
        model.ln_final.register_forward_hook(keep("text_last")),
        model.visual.transformer.resblocks[-2].register_forward_hook(keep("image_penultimate")),
        model.visual.transformer.resblocks[-1].register_forward_hook(keep("image_last")),
        model.visual.ln_post.register_forward_hook(keep("image_post")),
    ]
    with torch.no_grad():
        text_embeds = model.encode_text(ids)
        image_embeds = model.encode_image(pixels)
    for h in hooks:
        h.remove()
    rows = torch.arange(ids.shape[0])
    return {
        "text_embeds": text_embeds,
        "text_pooled": seen["text_last"][rows, ids.argmax(-1)],
        "text_last_hidden_state": seen["text_last"],
        "text_penultimate_hidden_state": seen["text_penultimate"],
        "image_embeds": image_embeds,
        "image_pooled": seen["image_post"][:, 0],
        "image_last_hidden_state": seen["image_last"],
        "image_penultimate_hidden_state": seen["image_penultimate"],
    }


# ---------------------------------------------------------------------------------------------
# Preprocessing.

def source_images():
    """Two sample photos (downscaling) and crops at sizes where the libraries' centre crops
    differ: transformers floors (h − size) / 2, torchvision rounds it half to even."""
    out = OUT / "images"
    out.mkdir(parents=True, exist_ok=True)
    photo = Image.open(FACE_API / "sample1_640.png").convert("RGB")
    images = {"sample1_640.png": photo,
              "sample4_640.png": Image.open(FACE_API / "sample4_640.png").convert("RGB")}

    def differs(w, h, size):
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        return (new_long - size) % 4 == 3

    # A portrait crop (upscaled to 224) and a small landscape one, both with differing crops.
    for w0, h0 in [(90, 130), (75, 47)]:
        w, h = w0, h0
        while not (differs(w, h, 224) and differs(w, h, 32)):
            w += 1
        crop = photo.crop((200, 60, 200 + w, 60 + h))
        images[f"crop_{w}x{h}.png"] = crop
    for name, img in images.items():
        if not name.startswith("sample"):
            img.save(out / name, optimize=True)
    return images


def hf_processor(size):
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size,
                                                                       "width": size})


def openclip_transform(size):
    return open_clip.transform.image_transform(size, is_train=False)


def preprocess_fixtures(images):
    result = []
    pixels = {}
    for name, img in images.items():
        for size in (224, 32):
            hf = hf_processor(size)
            hf_raw = hf(img, do_rescale=False, do_normalize=False,
                        return_tensors="np").pixel_values[0]
            hf_u8 = hf_raw.transpose(1, 2, 0).round().astype(np.uint8)
            assert np.array_equal(hf_raw.transpose(1, 2, 0), hf_u8.astype(np.float32))
            hf_px = hf(img, return_tensors="pt").pixel_values[0]
            oc = openclip_transform(size)
            resized = oc.transforms[0](img)
            oc_u8 = np.asarray(oc.transforms[1](resized).convert("RGB"))
            oc_px = oc(img)
            for lib, u8, px, resized_size in [
                ("huggingface", hf_u8, hf_px, None),
                ("open_clip", oc_u8, oc_px, resized.size),
            ]:
                result.append({
                    "image": name, "size": size, "library": lib,
                    "resized": list(resized_size) if resized_size else None,
                    "sha256": hashlib.sha256(np.ascontiguousarray(u8).tobytes()).hexdigest(),
                    "sum": float(px.double().sum()), "sum_sq": float((px.double() ** 2).sum()),
                })
                if size == 32:
                    pixels[(name, lib)] = px
            same = np.array_equal(hf_u8, oc_u8)
            print(f"preprocess {name} @ {size}: resized {resized.size}, HF and open_clip "
                  f"crops {'equal' if same else 'DIFFER'}")
    dump_json(OUT / "preprocess.json", {"versions": versions(), "cases": result})
    return pixels


# ---------------------------------------------------------------------------------------------
# State-dict keys of the full-size presets.

PRESETS = {
    # name: (open_clip name, HF text (width, heads, layers, mlp), HF vision (image, patch, width,
    # heads, layers, mlp), projection, act)
    "ViT-B-32": ("ViT-B-32-quickgelu", (512, 8, 12, 2048), (224, 32, 768, 12, 12, 3072), 512,
                 "quick_gelu"),
    "ViT-B-16": ("ViT-B-16-quickgelu", (512, 8, 12, 2048), (224, 16, 768, 12, 12, 3072), 512,
                 "quick_gelu"),
    "ViT-L-14": ("ViT-L-14-quickgelu", (768, 12, 12, 3072), (224, 14, 1024, 16, 24, 4096), 768,
                 "quick_gelu"),
    "ViT-L-14-336": ("ViT-L-14-336-quickgelu", (768, 12, 12, 3072),
                     (336, 14, 1024, 16, 24, 4096), 768, "quick_gelu"),
    "ViT-H-14": ("ViT-H-14", (1024, 16, 24, 4096), (224, 14, 1280, 16, 32, 5120), 1024, "gelu"),
    "ViT-bigG-14": ("ViT-bigG-14", (1280, 20, 32, 5120), (224, 14, 1664, 16, 48, 8192), 1280,
                    "gelu"),
}


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def key_fixtures():
    for preset, (oc_name, t, v, proj, act) in PRESETS.items():
        text = CLIPTextConfig(hidden_size=t[0], num_attention_heads=t[1], num_hidden_layers=t[2],
                              intermediate_size=t[3], hidden_act=act, projection_dim=proj)
        vision = CLIPVisionConfig(image_size=v[0], patch_size=v[1], hidden_size=v[2],
                                  num_attention_heads=v[3], num_hidden_layers=v[4],
                                  intermediate_size=v[5], hidden_act=act, projection_dim=proj)
        with torch.device("meta"):
            hf = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                      projection_dim=proj))
            oc = open_clip.model.CLIP(**open_clip.get_model_config(oc_name))
        keys = {"huggingface": shapes(hf), "open_clip": shapes(oc)}
        if preset == "ViT-bigG-14":
            # SDXL's text_encoder_2.
            with torch.device("meta"):
                keys["huggingface_text_with_projection"] = shapes(
                    CLIPTextModelWithProjection(text))
        if preset == "ViT-H-14":
            # IP-Adapter's image_encoder.
            with torch.device("meta"):
                keys["huggingface_vision_with_projection"] = shapes(
                    CLIPVisionModelWithProjection(vision))
        dump_json(OUT / f"keys_{preset}.json", keys)
        print(f"keys {preset}: " + ", ".join(f"{k} {len(v)}" for k, v in keys.items()))


# ---------------------------------------------------------------------------------------------

def main():
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_vocab = Path(open_clip.tokenizer.default_bpe())
    parser.add_argument("--vocab", type=Path, default=default_vocab,
                        help="bpe_simple_vocab_16e6.txt.gz (default: the one open_clip ships)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/idforge-clip-reference"))
    args = parser.parse_args()
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    tiny = tokenizer_fixtures(args.vocab, args.work)
    images = source_images()
    pixels = preprocess_fixtures(images)

    # Token ids: the tiny tokenizer (HF convention pads with <|endoftext|> 1023), and the same
    # ids padded with 0 for open_clip.
    prompts = ["a photo of a cat", "Portrait of a smiling woman, studio light!",
               "", " ".join(["a long prompt"] * 40)]
    hf_ids = torch.tensor(tiny(prompts, padding="max_length", max_length=77,
                               truncation=True).input_ids)
    oc_ids = hf_ids.clone()
    for row in oc_ids:
        end = int((row == 1023).nonzero()[0])
        row[end + 1:] = 0
    g = torch.Generator().manual_seed(7)
    noise = torch.randn((1, 3, 32, 32), generator=g)
    names = [n for n in images]
    hf_pixels = torch.cat([torch.stack([pixels[(n, "huggingface")] for n in names]), noise])
    oc_pixels = torch.cat([torch.stack([pixels[(n, "open_clip")] for n in names]), noise])
    dump_json(OUT / "inputs.json", {"prompts": prompts, "hf_ids": hf_ids.tolist(),
                                    "openclip_ids": oc_ids.tolist(), "images": names + ["noise"]})
    save_file({"hf_pixels": hf_pixels.contiguous(), "openclip_pixels": oc_pixels.contiguous()},
              OUT / "inputs.safetensors")

    models = [
        ("hf_quickgelu", lambda: hf_model("quick_gelu", 2), torch.float32, "hf", 1),
        ("hf_gelu", lambda: hf_model("gelu", 1023), torch.float16, "hf", 2),
        ("openclip_quickgelu", lambda: openclip_model(True), torch.bfloat16, "oc", 3),
        ("openclip_gelu", lambda: openclip_model(False), torch.float32, "oc", 4),
    ]
    for name, build, dtype, kind, seed in models:
        model = build()
        randomize(model, seed)
        round_to(model, dtype)
        state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()
                 if v.is_floating_point()}
        save_file(state, OUT / f"tiny_{name}.safetensors", metadata={"format": "pt"})
        if kind == "hf":
            model.config.to_json_file(OUT / f"tiny_{name}.config.json")
            out = hf_outputs(model, hf_ids, hf_pixels)
        else:
            out = openclip_outputs(model, oc_ids, oc_pixels)
        save_file({k: v.contiguous() for k, v in out.items()}, OUT / f"outputs_{name}.safetensors")
        te = torch.nn.functional.normalize(out["text_embeds"], dim=-1)
        ie = torch.nn.functional.normalize(out["image_embeds"], dim=-1)
        off = lambda m: (m - torch.eye(m.shape[0]) * 2).max().item()
        print(f"{name}: max cosine between different texts {off(te @ te.T):.3f}, "
              f"images {off(ie @ ie.T):.3f}")

    key_fixtures()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
