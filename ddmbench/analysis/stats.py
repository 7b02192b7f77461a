"""Small statistics shared by the analyses: percentile bootstrap intervals (scipy) and rank correlation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, *, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``values`` (N,); (nan, nan) when N < 2."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.all(values == values[0]):
        point = float(statistic(values)) if len(values) else float("nan")
        return (point, point) if len(values) else (float("nan"), float("nan"))
    res = stats.bootstrap((values,), lambda v, axis: np.apply_along_axis(statistic, axis, v), n_resamples=resamples,
                          confidence_level=level, method="percentile", random_state=np.random.default_rng(seed),
                          vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summary(values: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> dict[str, float | list[float]]:
    """Mean and median of ``values`` (N,) with 95% bootstrap intervals."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "mean_ci95": list(bootstrap_ci(values, np.mean, resamples=resamples, seed=seed)),
            "median": float(np.median(values)),
            "median_ci95": list(bootstrap_ci(values, np.median, resamples=resamples, seed=seed))}


def spearman(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """Spearman rank correlation and its p-value; None where one side is constant (undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"rho": None, "p_value": None}
    res = stats.spearmanr(a, b)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue)}


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order; reject H_i at level a iff adj_i <= a.

    Hand-written: scipy has only Benjamini–Hochberg (``scipy.stats.false_discovery_control``) and statsmodels
    is not a dependency. Step-down: sort ascending, adj_(i) = max_{j<=i} min(1, (m - j) p_(j)), 0-based j.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"Holm needs p-values in [0, 1], got {p_values}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted.tolist()


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (R,), R >= 2 (scipy.stats.t); a point when all are equal."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {len(v)}")
    mean, sem = float(v.mean()), float(stats.sem(v))
    if sem == 0:
        return mean, mean
    lo, hi = stats.t.interval(level, len(v) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)
