"""Per-expert accuracy (Roy et al. 2026, arXiv 2602.02685, "selected experts predict more accurately").

Held-out images x_0 are noised to a grid of t (x_t = (1 - t) x_0 + t eps, ``ddmbench.sampling.flow``); every expert's
velocity is scored against the true target v = eps - x_0 by its MSE per pixel, then grouped by the
router's selection at that (x_t, t): the top-k experts vs the rest, against the full ensemble's combined
prediction sum_j p_j v_j, the oracle expert (the image's own cluster) and the best single expert.
Pure functions: models and tensors in, numbers out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddmbench.sampling.flow import interpolate, velocity_target

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TOP_K = (1, 2)
ROW_KEYS = ("selected_top1", "not_selected_top1", "selected_top2", "not_selected_top2", "full_ensemble",
            "oracle_expert", "best_single_expert", "router_top1_is_oracle")


@torch.no_grad()
def errors_at(experts: Sequence[Model], router: Model, x0: torch.Tensor, t: float, generator: torch.Generator,
              batch: int = 250) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise x0 (N, C, H, W) to time t and score every expert there.

    Returns per-expert MSE e (N, K), router probabilities p (N, K) and the full ensemble's MSE (N,), each
    MSE a mean over pixels of (v_pred - (eps - x_0))^2. eps is drawn from ``generator`` for all N at once.
    """
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    errs, probs, full = [], [], []
    for xb, eb in zip(x0.split(batch), eps.split(batch)):
        tb = torch.full((len(xb),), float(t), dtype=xb.dtype)
        x_t, target = interpolate(xb, eb, tb), velocity_target(xb, eb)                 # (B, C, H, W)
        p = torch.softmax(router(x_t, tb).float(), dim=1)                               # (B, K)
        v = torch.stack([expert(x_t, tb) for expert in experts], dim=1)                 # (B, K, C, H, W)
        v_full = (p.view(*p.shape, 1, 1, 1).to(v.dtype) * v).sum(1)                     # (B, C, H, W)
        errs.append((v - target.unsqueeze(1)).square().flatten(2).mean(2))              # (B, K)
        full.append((v_full - target).square().flatten(1).mean(1))                      # (B,)
        probs.append(p)
    return torch.cat(errs), torch.cat(probs), torch.cat(full)


def summarise(t: float, e: torch.Tensor, p: torch.Tensor, full: torch.Tensor, cluster: torch.Tensor) -> dict[str, Any]:
    """One table row from per-expert MSE e (N, K), router probabilities p (N, K), ensemble MSE (N,), cluster (N,).

    selected_topk / not_selected_topk: mean MSE over (image, expert) pairs inside / outside the router's k
    most probable experts (None when k >= K leaves nothing outside); best_single_expert: the lowest mean
    MSE of one expert used for every image; router_top1_is_oracle: how often the router's top expert is
    the image's own cluster.
    """
    k_total = e.shape[1]
    order = p.argsort(dim=1, descending=True)
    row: dict[str, Any] = {"t": float(t)}
    for k in TOP_K:
        mask = torch.zeros_like(e, dtype=torch.bool).scatter_(1, order[:, :min(k, k_total)], True)
        row[f"selected_top{k}"] = float(e[mask].mean())
        row[f"not_selected_top{k}"] = float(e[~mask].mean()) if k < k_total else None
    row["full_ensemble"] = float(full.mean())
    row["oracle_expert"] = float(e.gather(1, cluster.view(-1, 1)).mean())
    row["best_single_expert"] = float(e.mean(0).min())
    row["router_top1_is_oracle"] = float((order[:, 0] == cluster).float().mean())
    return row


def expert_accuracy(experts: Sequence[Model], router: Model, x0: torch.Tensor, cluster: torch.Tensor,
                    ts: Sequence[float], seed: int, batch: int = 250,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The per-expert accuracy table over the t grid for held-out images x0 (N, C, H, W) of clusters (N,);
    ``progress(1)`` after each t.

    The noise comes from one generator seeded with ``seed``, drawn t by t, so a run replays exactly.
    Layout: {"t": [...], "n": N, "k": K, "rows": [{"t": .., "selected_top1": .., ...}, ...]}.
    """
    if len(x0) != len(cluster) or len(x0) == 0:
        raise ValueError(f"need one cluster per image, got {len(x0)} images and {len(cluster)} clusters")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in ts:
        rows.append(summarise(t, *errors_at(experts, router, x0, t, g, batch), cluster.long()))
        if progress is not None:
            progress(1)
    return {"t": [float(t) for t in ts], "n": len(x0), "k": len(experts), "rows": rows}
