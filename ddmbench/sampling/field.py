"""Velocity fields the solvers integrate: a single model, or a router + experts + policy (a DDM).

A field is any callable (x (B, C, H, W), t (B,)) -> v (B, C, H, W). ``RoutedField`` evaluates each expert
only on the rows whose weight for it is nonzero (sparse dispatch) and counts every evaluation.

Both fields call a model on at most ``chunk_rows`` rows at a time. On the CPU a small UNet runs faster on
64-row chunks than on a 256-row batch (its activations stay in cache), and the allocator then sees a few
fixed block sizes instead of every dispatch size, which keeps peak resident memory flat over many batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape, image_shape_of
from ddmbench.sampling.policies import PolicySpec, RoutingContext

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_CHUNK_ROWS = 64


def evaluate_in_chunks(model: Model, x: torch.Tensor, t: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """model(x, t) computed on row chunks of at most ``chunk_rows`` (0 = all rows at once); same shape out."""
    if chunk_rows <= 0 or x.shape[0] <= chunk_rows:
        return model(x, t)
    return torch.cat([model(x[i:i + chunk_rows], t[i:i + chunk_rows]) for i in range(0, x.shape[0], chunk_rows)])


class ModelField:
    """One velocity model as a field (the monolith, or a single expert), with an evaluation counter.

    ``image_shape`` (C, H, W) of the states it integrates: given, or the one the model was built for."""

    def __init__(self, model: Model, chunk_rows: int = DEFAULT_CHUNK_ROWS, image_shape: ImageShape | None = None
                 ) -> None:
        self.model = model
        self.image_shape: ImageShape = tuple(image_shape) if image_shape else image_shape_of(model)  # type: ignore[assignment]
        self.chunk_rows = chunk_rows
        self.evals = 0  # rows evaluated

    def reset_counters(self) -> None:
        self.evals = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.evals += x.shape[0]
        return evaluate_in_chunks(self.model, x, t, self.chunk_rows)


class RoutedField:
    """DDM velocity: v(x, t) = sum_j w_j(x, t) * expert_j(x, t), w = policy(softmax(router(x, t))).

    experts: K velocity models. router: (x, t) -> logits (B, K), or None for policies that ignore it.
    ``begin_batch`` sets the per-sample generators (sample-k), drawn clusters (oracle) and the probe rows
    for a batch. Counters: ``expert_evals[j]`` rows evaluated by expert j, ``router_evals`` rows seen by
    the router; ``probe_evals`` counts the extra evaluations made only for traces (not part of the cost).

    ``on_step``, if set, receives after every evaluation a record with ``step``, ``t`` (B,), ``p`` and
    ``w`` (B, K), ``x`` and ``v`` (B, C, H, W), and for the probe rows ``probe`` (R,) row indices and
    ``v_experts`` (K, R, C, H, W) every expert's prediction (for the alignment / accuracy analyses).

    ``spread`` (B,) accumulates, per row of the current batch, the policy-weighted disagreement of the
    experts it evaluated, sum_j w_j * mean_pixels (v_j - v)^2, over the batch's evaluations (``spread_evals``).
    It is free: only the experts the policy selected enter it (a one-expert policy has spread 0).

    ``image_shape`` (C, H, W): given, or the one the experts were built for (they and the router must agree).
    """

    def __init__(self, experts: Sequence[Model], router: Model | None, policy: PolicySpec,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, image_shape: ImageShape | None = None) -> None:
        if policy.uses_router and router is None:
            raise ValueError(f"policy '{policy.label}' needs a router")
        models = [*experts, *([router] if router is not None else [])]
        shapes = {image_shape_of(m) for m in models if getattr(m, "image_shape", None) is not None}
        if image_shape is None and len(shapes) > 1:
            raise ValueError(f"the experts and the router were built for different image shapes {sorted(shapes)}")
        self.image_shape: ImageShape = (tuple(image_shape) if image_shape  # type: ignore[assignment]
                                        else shapes.pop() if shapes else MNIST_SHAPE)
        self.experts = list(experts)
        self.chunk_rows = chunk_rows
        self.router = router
        self.policy = policy
        self.expert_evals = [0] * len(self.experts)
        self.router_evals = 0
        self.generators: list[torch.Generator] | None = None
        self.cluster: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None
        self.step = 0
        self.probe_evals = 0
        self.spread: torch.Tensor | None = None
        self.spread_evals = 0
        self.on_step: Callable[[dict[str, Any]], None] | None = None

    def reset_counters(self) -> None:
        self.expert_evals = [0] * len(self.experts)
        self.router_evals = 0
        self.probe_evals = 0

    def begin_batch(self, generators: list[torch.Generator] | None = None, cluster: torch.Tensor | None = None,
                    probe: torch.Tensor | None = None) -> None:
        """probe: (R,) indices of the rows whose every-expert predictions go to ``on_step``."""
        self.generators, self.cluster, self.probe, self.step = generators, cluster, probe, 0
        self.spread, self.spread_evals = None, 0

    def probabilities(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Router probabilities (B, K); uniform when the policy does not use the router."""
        k = len(self.experts)
        if not self.policy.uses_router:
            return torch.full((x.shape[0], k), 1.0 / k, device=x.device)
        self.router_evals += x.shape[0]
        return torch.softmax(evaluate_in_chunks(self.router, x, t, self.chunk_rows).float(), dim=1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(x, t)                                             # (B, K)
        ctx = RoutingContext(t=t, step=self.step, generators=self.generators, cluster=self.cluster)
        w = self.policy.weights(p, ctx)                                          # (B, K)
        self.step += 1
        v = torch.zeros_like(x)
        dispatched = []
        for j, expert in enumerate(self.experts):
            rows = torch.nonzero(w[:, j] > 0).squeeze(1)                         # rows routed to expert j
            if rows.numel() == 0:
                continue
            self.expert_evals[j] += rows.numel()
            v_j = evaluate_in_chunks(expert, x[rows], t[rows], self.chunk_rows)  # (R, C, H, W)
            v.index_add_(0, rows, w[rows, j].view(-1, 1, 1, 1).to(v.dtype) * v_j)
            dispatched.append((j, rows, v_j))
        self._accumulate_spread(w, v, dispatched)
        if self.on_step is not None:
            self.on_step(self._record(x, t, p, w, v))
        return v

    def _accumulate_spread(self, w: torch.Tensor, v: torch.Tensor,
                           dispatched: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        spread = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
        for j, rows, v_j in dispatched:
            sq = (v_j - v[rows]).double().pow(2).flatten(1).mean(1)             # (R,) per-pixel mean
            spread.index_add_(0, rows, w[rows, j].double() * sq)
        self.spread = spread if self.spread is None or self.spread.shape != spread.shape else self.spread + spread
        self.spread_evals += 1

    def _record(self, x: torch.Tensor, t: torch.Tensor, p: torch.Tensor, w: torch.Tensor, v: torch.Tensor
                ) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step - 1, "t": t, "p": p, "w": w, "x": x, "v": v}
        if self.probe is not None and self.probe.numel() > 0:
            xs, ts = x[self.probe], t[self.probe]
            record["probe"] = self.probe
            record["v_experts"] = torch.stack([evaluate_in_chunks(expert, xs, ts, self.chunk_rows)
                                               for expert in self.experts])                 # (K, R, C, H, W)
            self.probe_evals += len(self.experts) * self.probe.numel()
        return record
