"""Cluster-distance alignment: do the experts a policy selects belong to the data the trajectory is heading for?

At every field evaluation the denoised estimate x̂0 = x - t v (ddmbench.sampling.flow.denoised) is mapped into the
clustering feature space and its distance to every cluster centroid measured. Per evaluation: the
weight-averaged distance of the selected experts' centroids, the mean distance of the non-selected
ones, whether the top-weighted expert's centroid is the nearest one (hit), and whether the router's
top choice is (router hit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddmbench.sampling.flow import denoised

FeatureMap = Callable[[torch.Tensor], torch.Tensor]  # (n, C, H, W) model space -> (n, d) clustering features


def centroid_distances(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, features: FeatureMap,
                       centroids: torch.Tensor) -> torch.Tensor:
    """x, v: (M, S, C, H, W) states and combined velocities; t: (S,) -> (M, S, K) distances of x̂0 to centroids."""
    m, s = x.shape[:2]
    x0_hat = denoised(x.flatten(0, 1), v.flatten(0, 1), t.repeat(m))             # (M*S, C, H, W)
    return torch.cdist(features(x0_hat).double(), centroids.double()).view(m, s, -1)


def alignment(dist: torch.Tensor, w: torch.Tensor, p: torch.Tensor, *, weighted_top: bool = True) -> dict[str, Any]:
    """dist, w, p: (M, S, K) centroid distances, expert weights and router probabilities.

    Returns per-evaluation arrays (M, S): selected (weight-averaged distance of the selected centroids),
    unselected (mean distance of the others; nan where every expert is selected), hit (top-weighted
    expert is the nearest centroid; only if ``weighted_top``, i.e. the weights single one out) and
    router_hit (argmax p is the nearest centroid).
    """
    w = w.double()
    nearest = dist.argmin(-1)
    off = w <= 0
    n_off = off.sum(-1)
    unselected = torch.where(n_off > 0, (dist * off).sum(-1) / n_off.clamp_min(1), torch.full_like(dist[..., 0], torch.nan))
    out: dict[str, Any] = {"selected": (dist * w).sum(-1), "unselected": unselected,
                           "router_hit": (p.argmax(-1) == nearest).double()}
    out["hit"] = (w.argmax(-1) == nearest).double() if weighted_top else None
    return out
