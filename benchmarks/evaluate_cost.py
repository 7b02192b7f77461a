"""What the uncertainty and precision/recall add to `evaluate`, measured side by side in one run.

Synthetic evaluator-sized features (default profile: N = 1000 samples, M = 10000 real, d = 128), timed with
interleaved repeats (best of, which is the least disturbed by other processes on a shared machine):
  base      the metrics evaluate computed before: torchmetrics FID + KID
  added     FID/KID bootstrap intervals (B resamples), k-NN precision/recall, nearest-real distances
            (of which kid_setup: the kernel sums, M^2 / 2 + MN + N^2 kernel entries)
  per FID   one bootstrap FID with the fast Fréchet distance vs one torchmetrics FID on the same rows
Feature extraction (the evaluator's forward passes) is common to both and not included.

    python benchmarks/evaluate_cost.py [--n 1000] [--m 10000] [--resamples 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddmbench.evaluation.metrics import (
    FrechetToReal,
    KernelToReal,
    fid,
    kid,
    nearest_distance,
    precision_recall,
    quality_intervals,
)


def features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d ** 0.5
    return ((torch.randn(n, d, generator=g) @ mix) + shift).relu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--m", type=int, default=10000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    real, fake = features(args.m, args.d, 0), features(args.n, args.d, 1, 0.1)
    idx = torch.randint(args.n, (args.n,), generator=torch.Generator().manual_seed(0))
    frechet = FrechetToReal(real)

    def base() -> None:
        fid(real, fake)
        kid(real, fake, subset_size=500, subsets=50, seed=0)

    def added() -> None:
        quality_intervals(real, fake, resamples=args.resamples, seed=0)
        precision_recall(real[:args.n], fake)
        nearest_distance(fake, real)

    tasks = {"base": base, "added": added, "of which kid_setup": lambda: KernelToReal(real, fake),
             "fid_fast": lambda: frechet(fake[idx]), "fid_torchmetrics": lambda: fid(real, fake[idx])}
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for _ in range(args.repeats):
        for name, fn in tasks.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: min(v) for k, v in times.items()}
    print(f"N={args.n} M={args.m} d={args.d} B={args.resamples} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}")
    print("best s: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"added / base = {med['added'] / med['base']:.2f}")
    print(f"one bootstrap FID: fast / torchmetrics = {med['fid_fast'] / med['fid_torchmetrics']:.3f}")


if __name__ == "__main__":
    main()
