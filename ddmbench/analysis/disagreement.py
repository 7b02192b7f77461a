"""Expert disagreement along the trajectory and its relation to per-sample quality.

Two spreads of the experts' velocity predictions around a combined prediction, each a weighted variance
sum_j a_j * mean_pixels (v_j - sum_i a_i v_i)^2:
  - policy-weighted (a = w): what the policy actually mixed; recorded for every sample while sampling
    (ddmbench.sampling.observers.Spread), 0 for one-expert policies;
  - router-weighted (a = p): how much the experts the router trusts disagree at the state, whatever the
    policy selects; needs every expert's prediction, so only on the traced probe subset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddmbench.analysis.stats import spearman


def weighted_spread(v_experts: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """v_experts: (M, S, K, C, H, W); a: (M, S, K) weights summing to 1 -> (M, S) weighted variance per pixel."""
    a = a.double()
    v = v_experts.double().flatten(3)                                  # (M, S, K, D)
    combined = (a.unsqueeze(-1) * v).sum(2, keepdim=True)              # (M, S, 1, D)
    return (a * (v - combined).pow(2).mean(-1)).sum(-1)


def within_class_quantiles(values: np.ndarray, classes: np.ndarray, quantiles: int) -> np.ndarray:
    """(N,) quantile index 0..quantiles-1 of each value among the samples of its own class (ties by order);
    -1 for samples of a class with fewer than ``quantiles`` members (too few to split)."""
    out = np.full(len(values), -1, dtype=np.int64)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        if len(idx) < quantiles:
            continue
        order = idx[np.argsort(values[idx], kind="stable")]
        for q, group in enumerate(np.array_split(order, quantiles)):
            out[group] = q
    return out


def quality_relation(disagreement: np.ndarray, confidence: np.ndarray, nn_distance: np.ndarray,
                     predicted_class: np.ndarray, quantiles: int = 5) -> dict[str, Any]:
    """Per-sample quality against per-sample disagreement, all arrays (N,).

    Spearman rho of disagreement with the evaluator's confidence and with the distance to the nearest real
    feature, pooled and within class (the class-size-weighted mean of per-class rho). Per-sample quality
    by disagreement quantile, stratified by the evaluator's predicted class: quantiles are cut within each
    class, so every quantile holds the class mix of the whole set and a class that is both hard to agree on
    and low in confidence cannot make the quantiles differ by composition alone (averaging per-class means
    with class-size weights equals pooling the within-class bins). Classes with fewer than ``quantiles``
    samples are left out (``n_unstratified``). No FID per quantile: a fifth of the samples, chosen by
    disagreement, is not a representative set and FID at N/5 is biased by N.
    A constant disagreement (a one-expert policy) ranks nothing: rho is None and there are no quantiles.
    """
    d = np.asarray(disagreement, dtype=np.float64)
    conf, dist = np.asarray(confidence, dtype=np.float64), np.asarray(nn_distance, dtype=np.float64)
    classes = np.asarray(predicted_class).astype(np.int64)
    if not len(d) == len(conf) == len(dist) == len(classes):
        raise ValueError(f"per-sample arrays differ in length: {len(d)}, {len(conf)}, {len(dist)}, {len(classes)}")
    out: dict[str, Any] = {"spearman_confidence": spearman(d, conf), "spearman_nn_distance": spearman(d, dist),
                           "spearman_confidence_within_class": _within_class_rho(d, conf, classes),
                           "spearman_nn_distance_within_class": _within_class_rho(d, dist, classes),
                           "stratified_by": "predicted class", "by_quantile": [], "n_unstratified": 0}
    if np.ptp(d) == 0:
        return out
    q_of = within_class_quantiles(d, classes, quantiles)
    out["n_unstratified"] = int((q_of < 0).sum())
    for q in range(quantiles):
        idx = np.flatnonzero(q_of == q)
        if len(idx):
            out["by_quantile"].append({"quantile": q + 1, "n": len(idx), "disagreement_mean": float(d[idx].mean()),
                                       "confidence": float(conf[idx].mean()), "nn_distance": float(dist[idx].mean())})
    return out


def _within_class_rho(a: np.ndarray, b: np.ndarray, classes: np.ndarray) -> float | None:
    """Class-size-weighted mean of the per-class Spearman rho (classes where it is defined); None if none."""
    rhos, weights = [], []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        rho = spearman(a[idx], b[idx])["rho"]
        if rho is not None:
            rhos.append(rho)
            weights.append(len(idx))
    return float(np.average(rhos, weights=weights)) if rhos else None
