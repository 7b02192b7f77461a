"""Expert-data alignment against ground truth: does a policy weight the experts whose cluster the state belongs to?

The ground truth is the exact cluster posterior p*(k | x_t) of the training set (``ddmbench.analysis.posterior``),
which is independent of the policy, the experts and the router. Per traced state:
- posterior weight: sum_k w_k p*(k | x_t), the probability that the policy's weights land on the state's cluster
  (1 for one-hot weights on a certain cluster; 1/K for uniform weights whatever p*; can fall to 0);
- hit: the top-weighted expert is argmax p* (nan where the weights tie at the top, e.g. uniform: no top expert).
An earlier measure put x̂_0 = x_t - t v from the policy's own velocity next to the cluster centroids; under
top-1 or oracle it lands on the chosen expert's centroid by construction (hit rate 1), so it was dropped.
"""

from __future__ import annotations

import torch


def posterior_alignment(w: torch.Tensor, p_star: torch.Tensor) -> dict[str, torch.Tensor]:
    """w: (..., K) expert weights (rows sum to 1), p_star: (..., K) exact posterior -> per state (...,):
    ``posterior_weight`` sum_k w_k p*_k in [0, 1] and ``hit`` 1.0 / 0.0 (nan where the top weight is tied)."""
    w, p_star = w.double(), p_star.double()
    top = w.max(-1, keepdim=True).values
    tied = (w >= top - 1e-12).sum(-1) > 1
    hit = (w.argmax(-1) == p_star.argmax(-1)).double()
    return {"posterior_weight": (w * p_star).sum(-1), "hit": torch.where(tied, torch.nan, hit)}

