"""Driver of tools/cpu-speed/run: for each network and thread count, runs idforge's
`cpu_speed` bench and tools/cpu-speed/time_torch.py alternately (`--reps` times each, pinned to
the first `threads` cores with taskset), keeps each side's minimum and prints a Markdown table
of ms per forward and the ratio torch / idforge (> 1: idforge is faster). With `--cpu-time` the
table compares CPU time (user + system, all threads) instead of wall time: on a machine other
jobs load, the 1-thread CPU times are what stays comparable (wall times there measure the
queue as well); on an idle machine, wall time is the figure to publish."""
import argparse
import json
import os
import pathlib
import subprocess
import sys

NETS = {
    "unet32": ("unet", ["--latent", "32"], "SD1.5 UNet, batch 2, 32×32 latents"),
    "unet64": ("unet", ["--latent", "64"], "SD1.5 UNet, batch 2, 64×64 latents"),
    "clip-image": ("clip-image", [], "CLIP ViT-L/14 image tower, 1 image"),
    "clip-text": ("clip-text", [], "CLIP ViT-L/14 text tower, 1 text"),
    "dino": ("dino", [], "DINO ViT-S/16, 1 image"),
    "inception": ("inception", [], "FID InceptionV3, 1 image"),
}


def run(cmd, env, key):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])[key]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--idforge", required=True, help="the cpu_speed bench executable")
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=2, help="alternations of the two sides")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed forwards per process (the 64² UNet: one, it takes tens of seconds)")
    p.add_argument("--cpu-time", action="store_true",
                   help="compare CPU time (all threads) rather than wall time (loaded machines)")
    a = p.parse_args()
    key, unit = ("cpu_ms", "CPU ms") if a.cpu_time else ("ms", "ms")
    torch_script = pathlib.Path(__file__).with_name("time_torch.py")
    rows = []
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    load = os.getloadavg()[0]
    for name in a.nets.split(","):
        net, extra, label = NETS[name]
        for threads in map(int, a.threads.split(",")):
            cores = f"0-{threads - 1}"
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            rounds = ["--rounds", str(1 if name == "unet64" else a.rounds)]
            ours, theirs = float("inf"), float("inf")
            for _ in range(a.reps):
                ours = min(ours, run(["taskset", "-c", cores, a.idforge, "--bench", "--net", net,
                                      *extra, *rounds], env, key))
                theirs = min(theirs, run(["taskset", "-c", cores, sys.executable,
                                          str(torch_script), "--net", net, "--threads",
                                          str(threads), *extra, *rounds], env, key))
            row = f"| {label} | {threads} | {ours:.0f} | {theirs:.0f} | **{theirs / ours:.2f}×** |"
            print(row, file=sys.stderr)
            rows.append(row)
    print(f"| network | threads | idforge {unit} | PyTorch {unit} | ratio |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    load = max(load, os.getloadavg()[0])
    if load > 0.5 and not a.cpu_time:
        print(f"(load average up to {load:.1f} during the run: wall times of a loaded machine; "
              "--cpu-time compares CPU time)", file=sys.stderr)


if __name__ == "__main__":
    main()
