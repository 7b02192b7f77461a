"""The exact cluster posterior p*(k | x_t) on a prepared project: effective training points, split-half
identifiability, the error of a fixed random subset, and the cost per state, by t.

Reads <root>/outputs/prepare/dataset.pt and <root>/outputs/cluster/clusters.pt (run `ddmbench prepare` and
`ddmbench cluster` there first). Held-out test images are noised to each t; at those states p* over the full
training set is compared with p* over two disjoint halves (mean total variation, argmax agreement) and over
fixed random subsets of the given sizes. Wall time per state is of the full training set (chunked, float64).

    python benchmarks/posterior_identifiability.py --root . [--n 100] [--subset 6000 --subset 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddmbench.analysis.posterior import EmpiricalPosterior, compare_by_t
from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.io import load_tensors
from ddmbench.sampling.flow import interpolate

T_GRID = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--n", type=int, default=100, help="held-out states per t")
    ap.add_argument("--subset", type=int, action="append", default=None, help="subset size (repeat)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load_prepared(args.root / "outputs" / "prepare" / "dataset.pt")
    clusters = load_tensors(args.root / "outputs" / "cluster" / "clusters.pt", "ddmbench cluster")
    k = int(clusters["assignments"].max()) + 1
    full = EmpiricalPosterior(to_model_space(ds["train_x"]), clusters["assignments"], k, args.chunk)
    half_a, half_b = full.halves(args.seed + 1)
    subsets = {m: full.subset(m, args.seed + 2) for m in (args.subset or [6000, 20000])}
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(ds["test_x"]), generator=g)[:args.n]
    x0 = to_model_space(ds["test_x"][pick])
    rows = []
    for t_val in T_GRID:
        t = torch.full((len(x0),), t_val)
        x_t = interpolate(x0, torch.randn(x0.shape, generator=g), t)
        start = time.perf_counter()
        ref = full(x_t, t)
        seconds = time.perf_counter() - start
        halves = compare_by_t(half_a(x_t, t).log_p, half_b(x_t, t).log_p, t)[0]
        row = {"t": t_val, "n_eff_median": float(ref.n_eff.median()), "n_eff_q10": float(ref.n_eff.quantile(0.1)),
               "n_eff_q90": float(ref.n_eff.quantile(0.9)), "top_p_mean": float(ref.log_p.exp().max(1).values.mean()),
               "split_half_tv": halves["tv"], "split_half_agreement": halves["argmax_agreement"],
               "seconds_per_state": seconds / len(x0), "train_images": len(full)}
        for m, post in subsets.items():
            sub = compare_by_t(post(x_t, t).log_p, ref.log_p, t)[0]
            row[f"subset_{m}_tv"], row[f"subset_{m}_agreement"] = sub["tv"], sub["argmax_agreement"]
        rows.append(row)
        print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
