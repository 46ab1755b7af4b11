"""Times the reference implementations of idforge-bench's set-level metrics at the sizes of
`bench/benches/score_images.rs` (4200 generated × 20 reference rows), for comparison with its
`set_metric` lines.

Data: uniform [0, 1) float32, seeded (numpy's PCG64, not the Rust bench's StdRng: same kind of
data, not the same values). Each metric runs `--repeats` times in this process (default 3; the
first run is cold like the Rust bench's single run); one JSON line per metric with every time,
the median and the value.

    fid   clean-fid 0.1.35's path from features: np.mean (float32), np.cov(rowvar=False)
          (float64), then cleanfid.fid.frechet_distance (scipy.linalg.sqrtm of the 2048 × 2048
          product)
    kid   cleanfid.fid.kernel_distance(gen, ref), default 100 subsets of at most 1000 rows
          (here 20, the smaller set), float32 features as clean-fid passes them
    is    torchmetrics 1.9 InceptionScore(feature=torch.nn.Identity(), splits=10): update() on
          the float32 logits, timed compute() (its randperm included)
    cmmd  google-research/cmmd distance.py `mmd` (JAX) reimplemented in numpy float32: JAX is
          not installed here; on the CPU JAX would run the same float32 matmuls and exps

Thread counts come from the environment (OMP/MKL/OPENBLAS_NUM_THREADS); `--threads N` also
sets torch's intra-op threads.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

SIGMA = 10
SCALE = 1000


def cmmd_mmd(x, y):
    """google-research/cmmd distance.py `mmd`, the same expression in numpy."""
    x_sqnorms = np.diag(x @ x.T)
    y_sqnorms = np.diag(y @ y.T)
    gamma = 1 / (2 * SIGMA ** 2)
    k_xx = np.mean(np.exp(-gamma * (-2 * (x @ x.T) + x_sqnorms[:, None] + x_sqnorms[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * (x @ y.T) + x_sqnorms[:, None] + y_sqnorms[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * (y @ y.T) + y_sqnorms[:, None] + y_sqnorms[None, :])))
    return SCALE * (k_xx + k_yy - 2 * k_xy)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="fid,kid,is,cmmd")
    args = p.parse_args()

    import cleanfid
    import scipy
    import torch
    import torchmetrics
    from cleanfid.fid import frechet_distance, kernel_distance
    from torchmetrics.image.inception import InceptionScore

    warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from importlib.metadata import version
        cleanfid_version = version("clean-fid")
    except Exception:
        cleanfid_version = "?"
    machine = {
        "cores": os.cpu_count(),
        "load": float(open("/proc/loadavg").read().split()[0]),
        "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
        "clean_fid": cleanfid_version,
    }
    print(json.dumps({"measure": "machine", **machine}), flush=True)

    rng = np.random.default_rng(0)
    generated = rng.random((4200, 2048), dtype=np.float32)
    references = rng.random((20, 2048), dtype=np.float32)
    logits = rng.random((4200, 1008), dtype=np.float32)
    clip_gen = rng.random((4200, 512), dtype=np.float32)
    clip_ref = rng.random((20, 512), dtype=np.float32)

    def fid():
        mu1, sigma1 = np.mean(generated, axis=0), np.cov(generated, rowvar=False)
        mu2, sigma2 = np.mean(references, axis=0), np.cov(references, rowvar=False)
        return float(frechet_distance(mu1, sigma1, mu2, sigma2))

    def kid():
        np.random.seed(0)
        return kernel_distance(generated, references)

    logits_t = torch.from_numpy(logits)

    def inception():
        metric = InceptionScore(feature=torch.nn.Identity(), splits=10)
        metric.update(logits_t)
        torch.manual_seed(0)
        t = time.perf_counter()
        mean, _std = metric.compute()
        return float(mean), time.perf_counter() - t

    def cmmd():
        return float(cmmd_mmd(clip_gen, clip_ref))

    metrics = {"fid": fid, "kid": kid, "is": inception, "cmmd": cmmd}
    for name in args.only.split(","):
        times, value = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = metrics[name]()
            elapsed = time.perf_counter() - t
            if isinstance(out, tuple):  # IS: time compute() only, not the metric's construction
                out, elapsed = out
            value = out
            times.append(elapsed * 1e3)
        print(json.dumps({
            "measure": "set_metric_reference", "metric": name, "generated": 4200,
            "references": 20, "ms": round(statistics.median(times), 1),
            "runs_ms": [round(x, 1) for x in times], "value": float(f"{value:.6g}"),
            "load": float(open("/proc/loadavg").read().split()[0]),
        }), flush=True)


if __name__ == "__main__":
    main()
