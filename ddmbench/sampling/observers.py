"""Observers of a sampling run: they receive every field evaluation's :class:`Routing` record and return data.

The sampler calls ``start(rows)`` when a batch of ``rows`` samples begins (in seed order) and then the
observer with each evaluation's record; ``result()`` gives what it accumulated. They replace the counters
a field used to carry: a field stays stateless, and an analysis reads an observer's result, never a field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ddmbench.sampling.field import Routing, SampleContext


class Observer(Protocol):
    def start(self, rows: int) -> None: ...

    def __call__(self, r: Routing) -> None: ...


class Counting:
    """Cost counters: ``expert_evals[j]`` rows evaluated by expert j (the monolith counts as one expert),
    ``router_evals`` rows the router saw."""

    def __init__(self, num_experts: int) -> None:
        self.expert_evals = [0] * num_experts
        self.router_evals = 0

    def start(self, rows: int) -> None:
        pass

    def __call__(self, r: Routing) -> None:
        for j, rows, _ in r.dispatch:
            self.expert_evals[j] += rows.numel()
        self.router_evals += r.router_rows


class Spread:
    """Per-sample policy-weighted disagreement of the experts that ran, averaged over the evaluations:
    sum_j w_j * mean_pixels (v_j - v)^2 (free: only the experts the policy selected enter it, so a
    one-expert policy has spread 0). ``result()``: (N,) float32 in sampling order."""

    def __init__(self) -> None:
        self._done: list[torch.Tensor] = []
        self._sum: torch.Tensor | None = None
        self._evals = 0

    def _close(self) -> None:
        if self._sum is not None:
            self._done.append((self._sum / max(1, self._evals)).float().cpu())
        self._sum, self._evals = None, 0

    def start(self, rows: int) -> None:
        self._close()

    def __call__(self, r: Routing) -> None:
        spread = torch.zeros(r.v.shape[0], dtype=torch.float64, device=r.v.device)
        for j, rows, v_j in r.dispatch:
            sq = (v_j - r.v[rows]).double().pow(2).flatten(1).mean(1)               # (R,) per-pixel mean
            spread.index_add_(0, rows, r.w[rows, j].double() * sq)
        self._sum = spread if self._sum is None else self._sum + spread
        self._evals += 1

    def result(self) -> torch.Tensor:
        self._close()
        return torch.cat(self._done) if self._done else torch.empty(0)


def observed(field: Callable[..., Routing], ctx: SampleContext, observers: Sequence[Observer]
             ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The solver's ``field(x, t)`` for one batch: ``route(x, t, ctx)`` with ctx bound, every record handed
    to the observers, the combined velocity returned."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = field(x, t, ctx)
        for observe in observers:
            observe(r)
        return r.v

    return velocity


class States:
    """The states and routing weights of every evaluation (any field; memory N x S x C x H x W).
    ``result()``: t (S,), x (N, S, C, H, W), w (N, S, K), samples in sampling order."""

    def __init__(self) -> None:
        self._batches: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._t: list[float] = []

    def start(self, rows: int) -> None:
        self._batches.append(([], []))

    def __call__(self, r: Routing) -> None:
        if len(self._batches) == 1:
            self._t.append(float(r.t[0]))
        xs, ws = self._batches[-1]
        xs.append(r.x.detach().cpu())
        ws.append(r.w.detach().cpu())

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.tensor(self._t), torch.cat([torch.stack(x, dim=1) for x, _ in self._batches]),
                torch.cat([torch.stack(w, dim=1) for _, w in self._batches]))
