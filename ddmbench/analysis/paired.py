"""Paired contrasts between two policies sampled from the same seeds: per-seed analyses.

Every policy starts from the same initial noise per seed (and the amplification probes use the same
directions), so per-seed results of two policies are correlated. Resampling the seeds jointly keeps that
correlation and gives an interval for the *difference* that is much narrower than the two marginal
intervals side by side: two policies whose marginal 95% intervals overlap can still differ measurably.
Paired FID/KID differences (set statistics, not per-seed means) are in ddmbench/evaluation/intervals.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

from ddmbench.evaluation.intervals import verdict

P_VALUE_METHOD = "Wilcoxon signed-rank test of the per-seed differences, two-sided"
INTERVAL_METHOD = "BCa bootstrap of the mean per-seed difference (seeds resampled jointly)"


def align_by_seed(seeds_a: torch.Tensor, seeds_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (ia, ib) such that seeds_a[ia] == seeds_b[ib], over the seeds both hold, in seed order."""
    a, b = seeds_a.long().tolist(), seeds_b.long().tolist()
    pos_b = {s: i for i, s in enumerate(b)}
    common = sorted(set(a) & set(pos_b))
    pos_a = {s: i for i, s in enumerate(a)}
    return torch.tensor([pos_a[s] for s in common], dtype=torch.long), torch.tensor([pos_b[s] for s in common],
                                                                                    dtype=torch.long)


def mean_interval(d: np.ndarray, *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval (scipy.stats.bootstrap) of the mean of (n,) values; a point when all are equal."""
    d = np.asarray(d, dtype=np.float64)
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = stats.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="BCa",
                          random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_mean_delta(a: np.ndarray, b: np.ndarray, *, resamples: int, seed: int, level: float = 0.95,
                      estimand: str = "mean over seeds of a − b") -> dict[str, Any]:
    """mean(a − b) over paired rows (n,): ``estimate``, BCa bootstrap ``ci95``, ``estimand``, the two-sided
    Wilcoxon signed-rank ``p_value`` (1.0 when every difference is 0), the fraction of rows with a < b and
    the median difference. The interval covers sampling noise given one set of trained models."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        raise ValueError(f"a paired contrast needs at least 2 rows, got {len(d)}")
    interval = mean_interval(d, resamples=resamples, seed=seed, level=level)
    p_value = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"estimate": float(d.mean()), "ci95": list(interval), "estimand": estimand,
            "interval_method": INTERVAL_METHOD, "p_value": p_value, "p_value_method": P_VALUE_METHOD,
            "verdict": verdict(interval), "median_delta": float(np.median(d)), "frac_lower": float((d < 0).mean()),
            "n": int(len(d))}
