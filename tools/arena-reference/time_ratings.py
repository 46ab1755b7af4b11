"""Times arena-rank on a synthetic arena of 10 methods and 100 000 votes, and writes the votes
for idforge's side of the comparison (`bench/tests/arena_parity.rs`, the ignored test
`timing_on_100k_votes`, which reads the file named by IDFORGE_ARENA_TIMING_VOTES).

One JSON line per measurement, seconds:
    from_pandas   PairDataset.from_pandas on the votes' DataFrame (aggregation to unique rows)
    fit           BradleyTerry(...).fit on that dataset, twice: arena-rank builds its jitted
                  L-BFGS loop inside every call, so the second fit compiles again too
    bootstrap     compute_ratings_and_cis(ci_method="bootstrap", num_bootstrap=B) with a pool of
                  --jobs workers (spawn start method: fork deadlocks with JAX), B = --resamples

    python time_ratings.py --votes /tmp/arena-100k.json [--resamples 100] [--jobs N]
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

WINNER = {0: "model_a", 1: "model_b", 2: "tie", 3: "both_bad"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--votes", required=True)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--methods", type=int, default=10)
    p.add_argument("--resamples", type=int, default=100)
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    args = p.parse_args()

    rng = np.random.default_rng(11)
    k = args.methods
    strength = np.linspace(1.0, -1.0, k)
    i = rng.integers(k, size=args.n)
    j = (i + 1 + rng.integers(k - 1, size=args.n)) % k
    u = rng.random(args.n)
    p_win = 1 / (1 + np.exp(-(strength[i] - strength[j])))
    answer = np.where(u < 0.1, 2, np.where(u < 0.15, 3, np.where(rng.random(args.n) < p_win, 0, 1)))
    names = [f"method-{m:02d}" for m in range(k)]
    with open(args.votes, "w") as f:
        json.dump({"methods": names, "votes": {"left": i.tolist(), "right": j.tolist(), "answer": answer.tolist()}}, f)

    import pandas as pd
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    df = pd.DataFrame({"model_a": [names[x] for x in i], "model_b": [names[x] for x in j],
                       "winner": [WINNER[a] for a in answer]})

    def line(what, seconds, **extra):
        print(json.dumps({"side": "arena-rank", "what": what, "seconds": round(seconds, 4), "votes": args.n,
                          "methods": k, "cores": os.cpu_count(), **extra}), flush=True)

    t = time.perf_counter()
    ds = PairDataset.from_pandas(df)
    line("from_pandas", time.perf_counter() - t)
    for run in (1, 2):
        model = BradleyTerry(len(ds.competitors))
        t = time.perf_counter()
        model.fit(ds)
        np.asarray(model.params["ratings"])  # wait for JAX
        line("fit", time.perf_counter() - t, run=run)
    model = BradleyTerry(len(ds.competitors))
    model.fit(ds)
    t = time.perf_counter()
    model.compute_ratings_and_cis(ds, ci_method="bootstrap", num_bootstrap=args.resamples, n_jobs=args.jobs)
    line("bootstrap", time.perf_counter() - t, resamples=args.resamples, jobs=args.jobs)


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
