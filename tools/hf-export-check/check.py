#!/usr/bin/env python3
"""Loads an `idforge dataset export` folder with the real Hugging Face `datasets` library and
checks it: the card's configs and features, every image and reference image decoded with PIL,
face boxes inside their images, identities disjoint across splits, counts equal to the card's
and to idforge-export.json. Prints a summary and every failed check; exits 1 if any failed.

Usage: check.py EXPORT_FOLDER [--quiet]
(tools/hf-export-check/run sets up the environment and calls this.)
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile

# The export is local: never ask the Hub for anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import PIL  # noqa: E402
import pyarrow  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402  (a dependency of huggingface_hub)
from datasets import Image, Value  # noqa: E402

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()

failures = 0


def check(ok, what):
    global failures
    if not ok:
        failures += 1
        print(f"FAIL {what}")
    return ok


def card_header(folder):
    text = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    if not text.startswith("---\n"):
        sys.exit("README.md has no YAML header")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def fixed_list(feature):
    """(dtype, length) of a fixed-length list feature, in `datasets` 3.x (`Sequence`) or
    >= 4 (`List`) form; None when it is something else."""
    inner = getattr(feature, "feature", None)
    length = getattr(feature, "length", None)
    if isinstance(inner, Value) and isinstance(length, int) and length >= 0:
        return inner.dtype, length
    return None


def check_features(features, declared, how):
    names = [f["name"] for f in declared]
    check(list(features) == names, f"{how}: columns {list(features)} != card {names}")
    for f in declared:
        got = features.get(f["name"])
        if f.get("dtype") == "image":
            check(isinstance(got, Image), f"{how}: {f['name']} is {got!r}, not Image")
        elif "sequence" in f or "list" in f:
            want = (f.get("sequence") or f.get("list"), f.get("length"))
            check(fixed_list(got) == want, f"{how}: {f['name']} is {got!r}, want {want}")
        else:
            check(
                isinstance(got, Value) and got.dtype == f["dtype"],
                f"{how}: {f['name']} is {got!r}, want Value({f['dtype']!r})",
            )


def row_keys(ds):
    return list(zip(ds["image_id"], ds["face_index"]))


def load_three_ways(folder, shards, cache):
    # 1. The folder as a dataset repository: the card's configs pick the files, its
    #    dataset_info gives the features and the expected split sizes.
    dd = datasets.load_dataset(folder, cache_dir=cache)
    # 2. Plain Parquet files: features from the files' own `huggingface` metadata.
    dp = datasets.load_dataset("parquet", data_files=shards, cache_dir=cache)
    # 3. The Hub's split-name convention (data/<split>-NNNNN-of-NNNNN) without the card.
    dn = datasets.load_dataset("parquet", data_dir=folder, cache_dir=cache)
    return dd, dp, dn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--quiet", action="store_true", help="no per-split identity lists")
    args = ap.parse_args()
    folder = os.path.abspath(args.folder)
    print(
        f"datasets {datasets.__version__}, pyarrow {pyarrow.__version__}, Pillow {PIL.__version__}"
    )
    header = card_header(folder)
    marker = json.load(open(os.path.join(folder, "idforge-export.json"), encoding="utf-8"))
    check(marker.get("state") == "complete", f"idforge-export.json state {marker.get('state')}")
    info = header["dataset_info"]
    declared = info["features"]
    card_splits = {s["name"]: s for s in info["splits"]}
    config = header["configs"][0]
    check(config["config_name"] == "default", "the config is `default`")
    check(
        sorted(d["split"] for d in config["data_files"]) == sorted(card_splits),
        "configs and dataset_info name the same splits",
    )
    check(bool(header.get("license")), "the card has a license")

    # The Parquet metadata `datasets` reads features from, and the card's sizes.
    shards = {split: sorted(glob.glob(os.path.join(folder, "data", f"{split}-*.parquet")))
              for split in card_splits}
    download = 0
    for split, files in shards.items():
        for path in files:
            meta = pq.read_schema(path).metadata or {}
            check(b"huggingface" in meta, f"{path}: no huggingface metadata")
            feats = json.loads(meta[b"huggingface"])["info"]["features"]
            check(list(feats) == [f["name"] for f in declared], f"{path}: metadata columns")
            download += os.path.getsize(path)
    check(download == info["download_size"], "download_size is the shards' size")

    with tempfile.TemporaryDirectory() as cache:
        try:
            dd, dp, dn = load_three_ways(folder, shards, cache)
        except Exception as e:  # a load error is the finding: report it as one
            print(f"FAIL loading: {type(e).__name__}: {e}")
            sys.exit(1)
        for how, d in [("load_dataset(folder)", dd), ("parquet data_files", dp),
                       ("parquet data_dir", dn)]:
            for split in d:
                check_features(d[split].features, declared, f"{how}[{split}]")
        check(sorted(dd) == sorted(card_splits), f"splits {sorted(dd)} != card {sorted(card_splits)}")
        check(sorted(dn) == sorted(card_splits), "data_dir finds the same splits")

        identities = {}
        summary = []
        for split, ds in dd.items():
            n = len(ds)
            check(n == card_splits[split]["num_examples"],
                  f"{split}: {n} rows, card says {card_splits[split]['num_examples']}")
            check(n == marker["summary"][split]["rows"], f"{split}: rows != idforge-export.json")
            # What `datasets` measured while loading (pyarrow nbytes); informational in the card.
            recorded = ds.info.splits[split].num_bytes
            if recorded != card_splits[split]["num_bytes"]:
                print(f"NOTE {split}: datasets recorded num_bytes {recorded}, "
                      f"the card says {card_splits[split]['num_bytes']}")
            check(row_keys(ds) == row_keys(dp[split]) == row_keys(dn[split]),
                  f"{split}: the three ways of loading give other rows")
            ids = set(ds["identity"])
            identities[split] = ids
            check(ids == set(marker["summary"][split]["identities"]),
                  f"{split}: identities != idforge-export.json")
            sizes, refs, no_prompt = set(), 0, 0
            for i, row in enumerate(ds):
                where = f"{split}[{i}] {row['image_id'][:12]}#{row['face_index']}"
                img = row["image"]
                img.load()
                sizes.add(img.size)
                w, h = img.size
                box = row["face_box"]
                if check(box is not None and len(box) == 4, f"{where}: face_box {box}"):
                    x0, y0, x1, y1 = box
                    check(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h,
                          f"{where}: face_box {box} outside the {w}x{h} crop")
                if row["ref_image"] is not None:
                    row["ref_image"].load()
                    refs += 1
                check(bool(row["identity"]), f"{where}: empty identity")
                if row["prompt_general"] is None:
                    no_prompt += 1
                elif row["trigger"]:
                    check(row["trigger"] in row["prompt_general"],
                          f"{where}: trigger {row['trigger']!r} not in prompt_general")
            summary.append(
                f"  {split:<10} {n:>6} rows  {len(ids):>4} identities  "
                f"{len(shards[split])} shards  crops {sorted(sizes)}  {refs} refs decoded"
                + (f"  {no_prompt} without prompts" if no_prompt else "")
            )
            if not args.quiet:
                summary.append(f"             identities: {', '.join(sorted(ids))}")
        splits = list(identities)
        for a in range(len(splits)):
            for b in range(a + 1, len(splits)):
                shared = identities[splits[a]] & identities[splits[b]]
                check(not shared, f"{splits[a]} and {splits[b]} share identities {sorted(shared)}")

    # The validation draw, recomputed: sha256(seed as 8 little-endian bytes + identity), the
    # first ones held out.
    opts = marker["options"]
    if opts.get("val_identities") is None and "validation" in identities:
        everyone = set().union(*identities.values())
        order = sorted(everyone, key=lambda i: hashlib.sha256(
            opts["seed"].to_bytes(8, "little") + i.encode()).digest())
        held = set(order[:len(identities["validation"])])
        check(held == identities["validation"],
              f"validation identities {sorted(identities['validation'])} are not the first of "
              f"the seed-{opts['seed']} draw {order}")

    print(f"{folder}: {sum(len(d) for d in dd.values())} rows")
    print("\n".join(summary))
    print("features:", dict(dd[next(iter(dd))].features))
    if failures:
        print(f"{failures} checks failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
