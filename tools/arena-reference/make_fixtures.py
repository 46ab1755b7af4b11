"""Regenerates bench/tests/fixtures/arena/ from arena-rank (LMArena's Bradley-Terry library) and
the krippendorff package, on seeded synthetic vote sets.

Each case file holds the votes themselves (as the arena's `votes` table would: shown left,
shown right, answer, rater, item) and what the references computed from them:

    arena_rank.<policy>.ratings   arena_rank.models.bradley_terry.BradleyTerry fitted on
                                  PairDataset.from_pandas (its defaults: scale 400, base 10,
                                  init_rating 1000, L-BFGS with ftol = gtol = 1e-9, no
                                  reweighting), winner map model_a / model_b / tie / both_bad
                                  (arena-rank's default_outcome_map; `neither` is `both_bad`).
                                  Policy `tie` keeps `neither` rows, `drop` removes them first.
    bootstrap (main case)         compute_ratings_and_cis(ci_method="bootstrap",
                                  num_bootstrap=100, seed=42): its lower and upper bounds and
                                  variances; and, to check the mechanics exactly, the resampled
                                  counts of its unique (a, b, outcome) rows, drawn by the same
                                  jax.random.multinomial call it makes, with each resample's
                                  ratings from its own fit_single_bootstrap_sample (the bounds of
                                  those equal its bounds: checked here)
    agreement.<policy>            krippendorff.alpha(level_of_measurement="nominal") on the
                                  raters x units matrix (unit = item and alphabetically ordered
                                  pair of methods, a rater's last answer on it, coded 0 = first
                                  method better, 1 = second, 2 = tie), and the share of agreeing
                                  rater pairs

arena-rank bootstraps in a multiprocessing pool; with Linux's default `fork` start method and
JAX 0.8 the workers deadlock, so this script selects `spawn`.

    python make_fixtures.py [--out DIR]     # about 5 minutes on 2 cores (JAX compiles every fit)
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ANSWERS = ["left", "right", "tie", "neither"]
WINNER = {0: "model_a", 1: "model_b", 2: "tie", 3: "both_bad"}


def synthetic(seed, names, strength, n, tie=0.12, neither=0.06, raters=30, items=40, pair_weights=None,
              forbid=None, always_lose=None):
    """Seeded comparisons: a pair drawn by `pair_weights`, shown in random order; a tie with
    probability `tie`, `neither` with probability `neither`, else a Bradley-Terry draw on the
    natural-unit `strength`. `forbid`: pairs (index sets) never shown. `always_lose`: a method
    that loses every comparison it is in (no ties, no neither)."""
    rng = np.random.default_rng(seed)
    k = len(names)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k) if not (forbid and forbid_blocks(i, j, forbid))]
    if pair_weights is None:
        w = rng.uniform(0.4, 1.6, len(pairs))
    else:
        w = np.asarray(pair_weights, float)
    w = w / w.sum()
    # Raters are unevenly active, as real ones are.
    activity = rng.zipf(1.6, raters).astype(float)
    activity /= activity.sum()
    left, right, answer, rater, item = [], [], [], [], []
    for _ in range(n):
        i, j = pairs[rng.choice(len(pairs), p=w)]
        if rng.random() < 0.5:
            i, j = j, i
        u = rng.random()
        if always_lose is not None and always_lose in (i, j):
            a = 1 if i == always_lose else 0
        elif u < tie:
            a = 2
        elif u < tie + neither:
            a = 3
        else:
            p = 1.0 / (1.0 + np.exp(-(strength[i] - strength[j])))
            a = 0 if rng.random() < p else 1
        left.append(int(i))
        right.append(int(j))
        answer.append(int(a))
        rater.append(int(rng.choice(raters, p=activity)))
        item.append(int(rng.integers(items)))
    return {"left": left, "right": right, "answer": answer, "rater": rater, "item": item}


def forbid_blocks(i, j, forbid):
    """Whether the pair (i, j) crosses two of the `forbid` groups (methods never compared)."""
    gi = next(g for g, members in enumerate(forbid) if i in members)
    gj = next(g for g, members in enumerate(forbid) if j in members)
    return gi != gj


def frame(names, votes, policy):
    import pandas as pd

    rows = [
        (names[l], names[r], WINNER[a])
        for l, r, a in zip(votes["left"], votes["right"], votes["answer"])
        if not (policy == "drop" and a == 3)
    ]
    return pd.DataFrame(rows, columns=["model_a", "model_b", "winner"])


def arena_rank_ratings(names, votes, policy):
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    ds = PairDataset.from_pandas(frame(names, votes, policy))
    model = BradleyTerry(len(ds.competitors))
    model.fit(ds)
    scaled = np.asarray(model.params["ratings"]) * model.alpha + model.init_rating
    return dict(zip(ds.competitors, [float(x) for x in scaled]))


def arena_rank_bootstrap(names, votes, resamples, seed):
    """arena-rank's bootstrap intervals, and an exact replay of its resamples."""
    import jax
    import jax.numpy as jnp
    from arena_rank.models.bradley_terry import BradleyTerry, fit_single_bootstrap_sample
    from arena_rank.utils.data_utils import PairDataset

    ds = PairDataset.from_pandas(frame(names, votes, "tie"))
    model = BradleyTerry(len(ds.competitors))
    t0 = time.perf_counter()
    out = model.compute_ratings_and_cis(ds, ci_method="bootstrap", num_bootstrap=resamples, seed=seed,
                                        n_jobs=os.cpu_count())
    print(f"  arena-rank bootstrap ({resamples} resamples): {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # The same draw as compute_ratings_and_cis (bradley_terry.py, ci_method == "bootstrap").
    total = jnp.sum(ds.counts)
    counts = jax.random.multinomial(key=jax.random.PRNGKey(seed), n=int(total), p=ds.counts / total,
                                    shape=(resamples, ds.counts.shape[0]), dtype=model.dtype)
    replay = []
    for b in range(resamples):
        params = fit_single_bootstrap_sample(counts[b], model, ds)
        replay.append(np.asarray(params["ratings"]) * model.alpha + model.init_rating)
    replay = np.stack(replay)
    lo = np.quantile(replay, 0.025, axis=0)
    hi = np.quantile(replay, 0.975, axis=0)
    assert np.allclose(lo, np.asarray(out["rating_lower"]), atol=1e-6), (lo, out["rating_lower"])
    assert np.allclose(hi, np.asarray(out["rating_upper"]), atol=1e-6), (hi, out["rating_upper"])
    comp = ds.competitors
    return {
        "resamples": resamples,
        "seed": seed,
        "level": 0.95,
        "lo": dict(zip(comp, map(float, np.asarray(out["rating_lower"])))),
        "hi": dict(zip(comp, map(float, np.asarray(out["rating_upper"])))),
        "sd": dict(zip(comp, map(float, np.sqrt(np.asarray(out["variances"]))))),
        "replay": {
            "competitors": comp,
            "rows": [[int(a), int(b), float(o)] for (a, b), o in zip(np.asarray(ds.pairs), np.asarray(ds.outcomes))],
            "counts": np.asarray(counts).astype(int).tolist(),
            "ratings": replay.round(9).tolist(),
        },
    }


def agreement(names, votes, policy):
    import krippendorff

    last = {}
    for l, r, a, who, it in zip(votes["left"], votes["right"], votes["answer"], votes["rater"], votes["item"]):
        if a == 3 and policy == "drop":
            continue
        if a == 3:
            a = 2
        first, second = sorted([names[l], names[r]])
        flipped = names[l] != first
        value = 2 if a == 2 else (a if not flipped else 1 - a)
        last[((it, first, second), who)] = value
    units = sorted({u for u, _ in last})
    raters = sorted({w for _, w in last})
    ui = {u: k for k, u in enumerate(units)}
    ri = {w: k for k, w in enumerate(raters)}
    data = np.full((len(raters), len(units)), np.nan)
    for (u, w), v in last.items():
        data[ri[w], ui[u]] = v
    counts = np.stack([(data == v).sum(axis=0) for v in range(3)], axis=1)
    m = counts.sum(axis=1)
    pairable = m >= 2
    same = (counts[pairable] * (counts[pairable] - 1) / 2).sum()
    allp = (m[pairable] * (m[pairable] - 1) / 2).sum()
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal", value_domain=[0, 1, 2])
    return {
        "units": int(pairable.sum()),
        "answers": int(m[pairable].sum()),
        "rater_pairs": int(allp),
        "percent": float(100 * same / allp),
        "alpha": float(alpha),
    }


def case(name, description, names, votes, bootstrap=False, policies=("tie", "drop")):
    t0 = time.perf_counter()
    out = {
        "name": name,
        "description": description,
        "methods": names,
        "answers": ANSWERS,
        "votes": votes,
        "arena_rank": {p: {"ratings": arena_rank_ratings(names, votes, p)} for p in policies},
        "agreement": {p: agreement(names, votes, p) for p in policies},
    }
    if bootstrap:
        out["bootstrap"] = arena_rank_bootstrap(names, votes, 100, 42)
    print(f"{name}: {len(votes['left'])} votes, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[2]
    p.add_argument("--out", type=Path, default=root / "bench/tests/fixtures/arena")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import arena_rank  # noqa: F401  (fail early without the reference)
    import importlib.metadata as md

    versions = {k: md.version(k) for k in ["arena-rank", "jax", "optax", "numpy", "pandas", "krippendorff"]}
    print(versions, file=sys.stderr)

    six = ["photomaker", "instantid", "pulid", "ip-adapter-faceid", "copy-reference", "other-identity"]
    cases = [
        case("main", "6 methods with known strengths, 3000 votes, 12 % ties, 6 % neither, 30 raters "
             "of uneven activity, 40 items per pair (so items are judged by several raters)",
             six, synthetic(1, six, [0.9, 0.6, 0.3, 0.0, -0.5, -1.3], 3000), bootstrap=True),
        case("small", "4 methods, 80 votes: where the weak prior moves ratings most",
             six[:4], synthetic(2, six[:4], [0.5, 0.2, -0.1, -0.6], 80, raters=6, items=5)),
        case("separated", "5 methods, 1200 votes; `other-identity` loses every vote it is in "
             "(no finite maximum-likelihood rating)",
             six[:4] + ["other-identity"],
             synthetic(3, six[:4] + ["other-identity"], [0.6, 0.3, 0.0, -0.3, -2.0], 1200, always_lose=4)),
        case("disconnected", "5 methods in two groups never compared with each other ({a, b, c}, {d, e}), "
             "600 votes",
             ["a", "b", "c", "d", "e"],
             synthetic(4, ["a", "b", "c", "d", "e"], [0.4, 0.0, -0.4, 0.3, -0.3], 600, forbid=[{0, 1, 2}, {3, 4}])),
    ]
    for c in cases:
        c["versions"] = versions
        path = args.out / f"{c['name']}.json"
        path.write_text(json.dumps(c, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)", file=sys.stderr)


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
