"""What the uncertainty and precision/recall add to `evaluate`, measured side by side in one run.

Synthetic evaluator-sized features (default profile: N = 1000 samples, M = 10000 real, d = 128), timed with
interleaved repeats (best of, which is the least disturbed by other processes on a shared machine):
  base        the point metrics: plug-in FID + torchmetrics' subset KID
  real_setup  the real set prepared once for the jackknife (leave-one-group-out moments, covariance factors,
              the M x M kernel sums in chunks) — once per stage, shared by every policy `contrast` scores
  per_policy  one generated set's jackknife FID/KID intervals (G + 1 Fréchet distances, N^2 + NM kernel entries)
  pr_nn       k-NN precision/recall and nearest-real distances
Feature extraction (the evaluator's forward passes) is common to all and not included.

    python benchmarks/evaluate_cost.py [--n 1000] [--m 10000] [--groups 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddmbench.evaluation.fid import fid
from ddmbench.evaluation.intervals import RealSet, quality_intervals
from ddmbench.evaluation.kid import kid_subsets
from ddmbench.evaluation.precision_recall import nearest_distance, precision_recall


def features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d ** 0.5
    return ((torch.randn(n, d, generator=g) @ mix) + shift).relu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--m", type=int, default=10000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    real, fake = features(args.m, args.d, 0), features(args.n, args.d, 1, 0.1)
    prepared = RealSet(real, args.groups)

    def base() -> None:
        fid(real, fake)
        kid_subsets(real, fake, subset_size=500, subsets=50, seed=0)

    def pr_nn() -> None:
        precision_recall(real[:args.n], fake)
        nearest_distance(fake, real)

    tasks = {"base": base, "real_setup": lambda: RealSet(real, args.groups),
             "per_policy": lambda: quality_intervals(prepared, fake), "pr_nn": pr_nn}
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for _ in range(args.repeats):
        for name, fn in tasks.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    print(f"N={args.n} M={args.m} d={args.d} G={args.groups} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}")
    print("best s: " + ", ".join(f"{k} {v:.3f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
