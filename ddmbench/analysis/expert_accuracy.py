"""Per-expert accuracy (Roy et al. 2026, arXiv 2602.02685, "selected experts predict more accurately").

Held-out images x_0 are noised to a grid of t (x_t = (1 - t) x_0 + t eps, ``ddmbench.sampling.flow``); every expert's
velocity is scored against the true target v = eps - x_0 by its MSE per pixel, then grouped by the
router's selection at that (x_t, t): the top-k experts vs the rest, against the full ensemble's combined
prediction sum_j p_j v_j, the oracle expert (the image's own cluster) and the best single expert. Given the exact
cluster posterior p*(k | x_t) (``ddmbench.analysis.posterior``), also grouped by p*: the expert of the state's most
probable cluster vs the rest, and the p*-weighted error sum_k p*_k e_k.

Specialisation: on each cluster's images, the error of the other experts vs that of the cluster's
own expert, by t. Their ratio (others / own) is 1 when the experts are interchangeable, so switching experts
costs nothing, and grows with specialisation; it does not depend on the router, so it can come out against
the alignment explanation. Comparing experts on the same images keeps cluster difficulty out of it (an
expert's error on its own cluster vs on the other clusters' images mixes in how hard each cluster is: on the
CI profile one expert scored worse on its own cluster than on the others').
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
            "oracle_expert", "best_single_expert", "router_top1_is_oracle", "own_cluster", "other_experts",
            "specialisation")
BY_EXPERT_KEYS = ("own_cluster_by_expert", "other_experts_by_expert")   # (K,) lists, None where undefined
POSTERIOR_KEYS = ("posterior_top1", "not_posterior_top1", "posterior_weighted", "router_top1_is_posterior_top1")
Posterior = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> p*(k | x_t) (B, K)


@torch.no_grad()
def errors_at(experts: Sequence[Model], router: Model, x0: torch.Tensor, t: float, generator: torch.Generator,
              batch: int = 250, posterior: Posterior | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Noise x0 (N, C, H, W) to time t and score every expert there.

    Returns per-expert MSE e (N, K), router probabilities p (N, K), the full ensemble's MSE (N,), each
    MSE a mean over pixels of (v_pred - (eps - x_0))^2, and p* (N, K) at the same states (None without
    ``posterior``). eps is drawn from ``generator`` for all N at once.
    """
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    errs, probs, full, stars = [], [], [], []
    for xb, eb in zip(x0.split(batch), eps.split(batch)):
        tb = torch.full((len(xb),), float(t), dtype=xb.dtype)
        x_t, target = interpolate(xb, eb, tb), velocity_target(xb, eb)                 # (B, C, H, W)
        p = torch.softmax(router(x_t, tb).float(), dim=1)                               # (B, K)
        v = torch.stack([expert(x_t, tb) for expert in experts], dim=1)                 # (B, K, C, H, W)
        v_full = (p.view(*p.shape, 1, 1, 1).to(v.dtype) * v).sum(1)                     # (B, C, H, W)
        errs.append((v - target.unsqueeze(1)).square().flatten(2).mean(2))              # (B, K)
        full.append((v_full - target).square().flatten(1).mean(1))                      # (B,)
        probs.append(p)
        if posterior is not None:
            stars.append(posterior(x_t, tb).double())                                    # (B, K)
    return torch.cat(errs), torch.cat(probs), torch.cat(full), torch.cat(stars) if stars else None


def summarise(t: float, e: torch.Tensor, p: torch.Tensor, full: torch.Tensor, cluster: torch.Tensor,
              p_star: torch.Tensor | None = None) -> dict[str, Any]:
    """One table row from per-expert MSE e (N, K), router probabilities p (N, K), ensemble MSE (N,), cluster (N,).

    selected_topk / not_selected_topk: mean MSE over (image, expert) pairs inside / outside the router's k
    most probable experts (None when k >= K leaves nothing outside); best_single_expert: the lowest mean
    MSE of one expert used for every image; router_top1_is_oracle: how often the router's top expert is
    the image's own cluster. With p* (N, K): posterior_top1 / not_posterior_top1, the mean MSE of the expert of
    argmax p* / of the others; posterior_weighted, the mean of sum_k p*_k e_k; router_top1_is_posterior_top1.
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
    row.update(specialisation(e, cluster))
    if p_star is not None:
        star = p_star.argmax(1, keepdim=True)                                           # (N, 1)
        on = torch.zeros_like(e, dtype=torch.bool).scatter_(1, star, True)
        row["posterior_top1"] = float(e[on].mean())
        row["not_posterior_top1"] = float(e[~on].mean()) if k_total > 1 else None
        row["posterior_weighted"] = float((p_star.to(e.dtype) * e).sum(1).mean())
        row["router_top1_is_posterior_top1"] = float((order[:, :1] == star).float().mean())
    return row


def specialisation(e: torch.Tensor, cluster: torch.Tensor) -> dict[str, Any]:
    """From per-expert MSE e (N, K) and clusters (N,), for each cluster k with images: ``own_cluster_by_expert[k]``,
    expert k's mean MSE on cluster k's images, and ``other_experts_by_expert[k]``, the other experts' mean MSE on
    the same images (None where cluster k has no image, or K = 1); ``own_cluster`` and ``other_experts`` average
    them over the clusters that have both, and ``specialisation`` = other_experts / own_cluster."""
    own: list[float | None] = []
    other: list[float | None] = []
    for k in range(e.shape[1]):
        mine = cluster == k
        rest = [j for j in range(e.shape[1]) if j != k]
        own.append(float(e[mine, k].mean()) if mine.any() else None)
        other.append(float(e[mine][:, rest].mean()) if mine.any() and rest else None)
    both = [(o, x) for o, x in zip(own, other) if o is not None and x is not None]
    own_mean = sum(o for o, _ in both) / len(both) if both else None
    other_mean = sum(x for _, x in both) / len(both) if both else None
    return {"own_cluster": own_mean, "other_experts": other_mean,
            "specialisation": other_mean / own_mean if own_mean else None,
            "own_cluster_by_expert": own, "other_experts_by_expert": other}


def expert_accuracy(experts: Sequence[Model], router: Model, x0: torch.Tensor, cluster: torch.Tensor,
                    ts: Sequence[float], seed: int, batch: int = 250, posterior: Posterior | None = None,
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
        e, p, full, p_star = errors_at(experts, router, x0, t, g, batch, posterior)
        rows.append(summarise(t, e, p, full, cluster.long(), p_star))
        if progress is not None:
            progress(1)
    return {"t": [float(t) for t in ts], "n": len(x0), "k": len(experts), "rows": rows}
