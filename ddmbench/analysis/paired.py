"""Paired contrasts between two policies sampled from the same seeds.

Every policy starts from the same initial noise per seed (and the amplification probes use the same
directions), so per-seed results of two policies are correlated. Resampling the seeds jointly keeps that
correlation and gives an interval for the *difference* that is much narrower than the two marginal
intervals side by side: two policies whose marginal 95% intervals overlap can still differ measurably.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

from ddmbench.evaluation.metrics import FrechetToReal, bootstrap_indices, centred_percentile_interval


def align_by_seed(seeds_a: torch.Tensor, seeds_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (ia, ib) such that seeds_a[ia] == seeds_b[ib], over the seeds both hold, in seed order."""
    a, b = seeds_a.long().tolist(), seeds_b.long().tolist()
    pos_b = {s: i for i, s in enumerate(b)}
    common = sorted(set(a) & set(pos_b))
    pos_a = {s: i for i, s in enumerate(a)}
    return torch.tensor([pos_a[s] for s in common], dtype=torch.long), torch.tensor([pos_b[s] for s in common],
                                                                                    dtype=torch.long)


def verdict(interval: tuple[float, float]) -> str:
    """'lower' / 'higher' when a 95% interval of a difference (a - b) excludes 0, else 'not separable'."""
    lo, hi = interval
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "not separable"


def paired_fid_delta(real: torch.Tensor, fake_a: torch.Tensor, fake_b: torch.Tensor, *, resamples: int, seed: int,
                     level: float = 0.95, batch: int = 25) -> dict[str, Any]:
    """FID(a) − FID(b) against one real set, with a paired bootstrap interval over the generated rows.

    real: (M, d); fake_a, fake_b: (N, d) features whose row i comes from the same seed. Each replicate draws
    one set of row indices and scores both policies on it; the interval is bias-centred like the marginal
    FID intervals (``centred_percentile_interval``).
    """
    if fake_a.shape != fake_b.shape:
        raise ValueError(f"paired FID needs row-aligned features, got {tuple(fake_a.shape)} and {tuple(fake_b.shape)}")
    frechet = FrechetToReal(real)
    a64, b64 = fake_a.double(), fake_b.double()
    idx = bootstrap_indices(len(a64), resamples, seed)
    delta_b = torch.cat([frechet(a64[i]) - frechet(b64[i]) for i in idx.split(batch)])   # (B,)
    point = float(frechet(a64) - frechet(b64))
    interval = centred_percentile_interval(point, delta_b, level)
    return {"delta": point, "delta_ci95": list(interval), "verdict": verdict(interval), "n": len(a64),
            "bootstrap": resamples}


def paired_mean_delta(a: np.ndarray, b: np.ndarray, *, resamples: int, seed: int,
                      level: float = 0.95) -> dict[str, Any]:
    """mean(a − b) over paired rows (N,) with a percentile-bootstrap interval, the fraction of rows with a < b,
    and the Wilcoxon signed-rank p-value (two-sided; None when every difference is 0)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        raise ValueError(f"a paired contrast needs at least 2 rows, got {len(d)}")
    if np.all(d == d[0]):
        interval = (float(d[0]), float(d[0]))
    else:
        res = stats.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                              random_state=np.random.default_rng(seed), vectorized=True)
        interval = (float(res.confidence_interval.low), float(res.confidence_interval.high))
    wilcoxon_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else None
    return {"delta": float(d.mean()), "delta_ci95": list(interval), "verdict": verdict(interval),
            "median_delta": float(np.median(d)), "frac_lower": float((d < 0).mean()), "wilcoxon_p": wilcoxon_p,
            "n": int(len(d))}
