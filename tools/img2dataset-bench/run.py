#!/usr/bin/env python3
"""Run img2dataset over a URL list and print one JSON line with its throughput.

Usage (inside <repo>/.venv-bench, see setup.sh):
    run.py --urls FILE --out DIR [--processes N] [--threads N] [--shard-size N] [--no-exif]

FILE: one URL per line (blank lines ignored). DIR must not exist or be empty.
stdout: exactly one JSON line at the end; everything else (img2dataset's own prints,
its tqdm bar, its worker processes' output) goes to stderr.

What img2dataset 1.47.0 does per image in the configuration used here
(resize_mode="no", skip_reencode=True, encode_format="jpg", disable_all_reencoding=False,
output_format="files", compute_hash="sha256" and extract_exif=True (both img2dataset's
defaults), timeout=10, retries=0, default disallowed_header_directives):

  1. download (downloader.py, download_image): urllib.request.urlopen(Request(url,
     headers={"User-Agent": ...}), timeout=10) -- a fresh connection per image, no
     keep-alive; if an X-Robots-Tag header carries noai/noimageai/noindex/noimageindex
     the image is rejected (is_disallowed); otherwise r.read() loads the whole body
     into a BytesIO.
  2. decode + validate (resizer.py, Resizer.__call__): because disable_all_reencoding is
     False the decode path runs: imghdr.what() sniffs the format,
     cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) fully decodes the pixels, and a None result
     raises "Image decoding error" (counted as failed_to_resize); the size / area /
     aspect-ratio checks run (no-ops with their defaults); resize_mode="no" skips every
     resize branch.
  3. no re-encode: with skip_reencode=True, encode_needed = (imghdr.what(...) != "jpeg"),
     so for a JPEG input img_str = img_buf.tobytes() -- the original downloaded bytes
     are written unchanged. (A non-JPEG input, e.g. PNG, WOULD be re-encoded to JPEG.)
  4. EXIF (downloader.py): exifread.process_file() on the original bytes.
  5. hash (downloader.py): hashlib.sha256(original bytes).hexdigest().
  6. write (writer.py, FilesSampleWriter.write): <DIR>/<shard>/<key>.jpg (the bytes),
     <DIR>/<shard>/<key>.json (metadata); one row per sample into <DIR>/<shard>.parquet;
     at the end of each shard <DIR>/<shard>_stats.json.

Why not disable_all_reencoding=True: that path returns img_stream.read() immediately
and never decodes, so corrupt images would count as successes. Why not the default
skip_reencode=False: every image would be decoded AND re-encoded at quality 95,
which is a transcoding benchmark, not a fetch+validate one. skip_reencode=True with
resize_mode="no" is the one configuration that decodes every image and still writes
the original bytes.

Work split: img2dataset hands one shard to one worker process, so with its default
number_sample_per_shard=10000 a small list would use one process only. The shard size
defaults here to min(10000, ceil(N / processes)) so every process gets work.

Timing: "seconds" is wall time around the download() call, which includes spawning
img2dataset's logger process and its worker pool (each spawned worker imports
img2dataset/cv2/pyarrow), sharding the URL list to feather files, the downloads, and
the final logger join / temp cleanup. It excludes this interpreter's own start and its
`import img2dataset` (reported separately as import_seconds). "stats_seconds" is what
img2dataset's own stats say: max(end_time) - min(start_time) over the *_stats.json
files, i.e. from the first shard starting work inside a worker to the last one ending.
"images_per_s" = ok / seconds.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# albumentations (imported by img2dataset, in this process and in every spawned worker)
# otherwise checks the package index for a newer version on import: a network round
# trip per process that has nothing to do with the benchmark.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def log(*a):
    print("[run.py]", *a, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--urls", required=True, help="text file, one URL per line")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="img2dataset number_sample_per_shard (default: min(10000, ceil(N/processes)))",
    )
    p.add_argument(
        "--no-exif", action="store_true", help="extract_exif=False (img2dataset's default is True)"
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="i2d-bench-")
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp):

    urls = [ln.strip() for ln in Path(args.urls).read_text(encoding="utf-8").splitlines()]
    urls = [u for u in urls if u]
    n = len(urls)
    if n == 0:
        log("no URLs in", args.urls)
        return 2

    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        log(f"refusing to run: {out} exists and is not an empty directory (incremental mode would skip shards)")
        return 2

    shard_size = args.shard_size or max(1, min(10000, math.ceil(n / args.processes)))
    n_shards = math.ceil(n / shard_size)

    # img2dataset's "txt" input is parsed as a one-column CSV by pyarrow, so a URL with
    # a comma or a quote would break it; such lists go in as parquet (same reader path
    # after parsing). The list is written to a temp dir outside DIR.
    if any(("," in u) or ('"' in u) for u in urls):
        import pyarrow as pa
        import pyarrow.parquet as pq

        url_file, input_format = os.path.join(tmp, "urls.parquet"), "parquet"
        pq.write_table(pa.table({"url": urls}), url_file)
    else:
        url_file, input_format = os.path.join(tmp, "urls.txt"), "txt"
        Path(url_file).write_text("\n".join(urls) + "\n", encoding="utf-8")

    t_imp = time.perf_counter()
    import importlib.metadata as md

    from img2dataset import download

    import_seconds = time.perf_counter() - t_imp
    version = md.version("img2dataset")
    log(
        f"img2dataset {version}: {n} urls, {args.processes} processes x {args.threads} threads, "
        f"{n_shards} shard(s) of <= {shard_size}, import took {import_seconds:.2f}s"
    )

    # Route fd 1 to stderr for the duration of the call: img2dataset prints to stdout,
    # and the spawned logger/worker processes inherit fd 1 at spawn time.
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        t0 = time.perf_counter()
        download(
            url_list=url_file,
            input_format=input_format,
            output_folder=str(out),
            output_format="files",
            processes_count=args.processes,
            thread_count=args.threads,
            number_sample_per_shard=shard_size,
            distributor="multiprocessing",
            resize_mode="no",
            skip_reencode=True,
            encode_format="jpg",
            disable_all_reencoding=False,
            extract_exif=not args.no_exif,
            compute_hash="sha256",
            timeout=10,
            retries=0,
            max_shard_retry=1,
            incremental_mode="incremental",  # DIR is fresh, so nothing is skipped
            enable_wandb=False,
            # disallowed_header_directives left at its default (X-Robots-Tag honoured)
        )
        seconds = time.perf_counter() - t0
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)

    stats = []
    for f in sorted(out.glob("*_stats.json")):
        with open(f, encoding="utf-8") as fh:
            stats.append(json.load(fh))
    count = sum(s["count"] for s in stats)
    ok = sum(s["successes"] for s in stats)
    f_dl = sum(s["failed_to_download"] for s in stats)
    f_rs = sum(s["failed_to_resize"] for s in stats)
    stats_seconds = (
        max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats) if stats else None
    )
    missing = n - count  # URLs in shards that produced no stats file (shard crashed)
    status = {}
    for s in stats:
        for k, v in s.get("status_dict", {}).items():
            status[k] = status.get(k, 0) + v
    log(
        f"shards with stats {len(stats)}/{n_shards}; count {count}, successes {ok}, "
        f"failed_to_download {f_dl}, failed_to_resize {f_rs}, missing {missing}; "
        f"wall {seconds:.3f}s, img2dataset stats {stats_seconds if stats_seconds is None else round(stats_seconds, 3)}s"
    )
    if status:
        top = sorted(status.items(), key=lambda kv: -kv[1])[:5]
        log("status:", "; ".join(f"{v}x {k}" for k, v in top))

    result = {
        "tool": "img2dataset",
        "version": version,
        "images": n,
        "ok": ok,
        "failed": n - ok,
        "seconds": round(seconds, 4),
        "images_per_s": round(ok / seconds, 2) if seconds > 0 else None,
        "processes": args.processes,
        "threads": args.threads,
        # extras beyond the required keys
        "stats_seconds": None if stats_seconds is None else round(stats_seconds, 4),
        "import_seconds": round(import_seconds, 4),
        "shards": n_shards,
    }
    print(json.dumps(result), flush=True)
    return 0 if stats else 1


if __name__ == "__main__":
    sys.exit(main())
