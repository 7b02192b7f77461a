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
from ddmbench.evaluation.metrics import fid


def weighted_spread(v_experts: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """v_experts: (M, S, K, C, H, W); a: (M, S, K) weights summing to 1 -> (M, S) weighted variance per pixel."""
    a = a.double()
    v = v_experts.double().flatten(3)                                  # (M, S, K, D)
    combined = (a.unsqueeze(-1) * v).sum(2, keepdim=True)              # (M, S, 1, D)
    return (a * (v - combined).pow(2).mean(-1)).sum(-1)


def quality_relation(disagreement: np.ndarray, confidence: np.ndarray, nn_distance: np.ndarray,
                     real_feats: torch.Tensor, fake_feats: torch.Tensor, quantiles: int = 5) -> dict[str, Any]:
    """Spearman rho of per-sample disagreement (N,) with confidence and nearest-real distance, and quality
    by disagreement quantile (lowest first): FID of the quantile's samples, mean confidence, mean distance.
    A constant disagreement (a one-expert policy) ranks nothing: rho is None and there are no quantiles."""
    if np.ptp(disagreement) == 0:
        return {"spearman_confidence": spearman(disagreement, confidence),
                "spearman_nn_distance": spearman(disagreement, nn_distance), "by_quantile": []}
    order = np.argsort(disagreement, kind="stable")
    groups = np.array_split(order, quantiles)
    by_quantile = []
    for q, idx in enumerate(groups):
        sel = torch.from_numpy(idx)
        by_quantile.append({"quantile": q + 1, "n": len(idx),
                            "disagreement_mean": float(disagreement[idx].mean()),
                            "fid": fid(real_feats, fake_feats[sel]) if len(idx) >= 2 else None,
                            "confidence": float(confidence[idx].mean()),
                            "nn_distance": float(nn_distance[idx].mean())})
    return {"spearman_confidence": spearman(disagreement, confidence),
            "spearman_nn_distance": spearman(disagreement, nn_distance), "by_quantile": by_quantile}
