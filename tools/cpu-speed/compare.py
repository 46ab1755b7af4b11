"""Driver of tools/cpu-speed/run: for each network and thread count, runs idforge's
`cpu_speed` bench and tools/cpu-speed/time_torch.py alternately (`--reps` times each, pinned to
the first `threads` cores with taskset), keeps each side's minimum and prints a Markdown table
of ms per forward and the ratio torch / idforge (> 1: idforge is faster)."""
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


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--idforge", required=True, help="the cpu_speed bench executable")
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=2, help="alternations of the two sides")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed forwards per process (the 64² UNet: one, it takes tens of seconds)")
    a = p.parse_args()
    torch_script = pathlib.Path(__file__).with_name("time_torch.py")
    rows = []
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    for name in a.nets.split(","):
        net, extra, label = NETS[name]
        for threads in map(int, a.threads.split(",")):
            cores = f"0-{threads - 1}"
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            rounds = ["--rounds", str(1 if name == "unet64" else a.rounds)]
            ours, theirs = float("inf"), float("inf")
            for _ in range(a.reps):
                ours = min(ours, run(["taskset", "-c", cores, a.idforge, "--bench", "--net", net,
                                      *extra, *rounds], env))
                theirs = min(theirs, run(["taskset", "-c", cores, sys.executable,
                                          str(torch_script), "--net", net, "--threads",
                                          str(threads), *extra, *rounds], env))
            row = f"| {label} | {threads} | {ours:.0f} | {theirs:.0f} | **{theirs / ours:.2f}×** |"
            print(row, file=sys.stderr)
            rows.append(row)
    print("| network | threads | idforge ms | PyTorch ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
