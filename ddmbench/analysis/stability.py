"""Trajectory sensitivity: perturbation amplification of the sampler and the local Lipschitz constant of the field.

Amplification (DESIGN.md "Measurements"): perturb the initial noise z of each seed by eps * u with
||u|| = 1 (u drawn per seed), integrate the same policy with the same routing randomness (the routing
generators come from the seeds, not from the noise), and report ||x0(z + eps u) - x0(z)|| / eps. A
smooth field gives a finite ratio that barely depends on eps; a routing switch (a discontinuity of
the field) shows up as ratios that grow as eps shrinks.

Local Lipschitz: at every field evaluation along the unperturbed trajectory, ||v(x + d u) - v(x)|| / d
for a random unit direction u, with the routing draws of the evaluation replayed for x + d u.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.sampler import generate, noise_for

DIRECTION_STREAM = 0xD1_2EC7  # offsets the direction draws from the noise stream of the same seed


def unit_directions(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) directions of unit Euclidean norm, row i from a generator seeded by seeds[i]."""
    u = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s) + DIRECTION_STREAM))
                     for s in seeds])
    return u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


def amplification(field: ModelField | RoutedField, seeds: Sequence[int], eps: Sequence[float], *, nfe_steps: int,
                  solver: str, batch_size: int, cluster: torch.Tensor | None = None, base: torch.Tensor | None = None
                  ) -> dict[float, torch.Tensor]:
    """eps -> (N,) ||x0(z + eps u) - x0(z)|| / eps per seed (Euclidean norm over all pixels, model space).

    base: the unperturbed samples x0(z) (N, C, H, W) if already drawn with the same settings.
    """
    z = noise_for(seeds, field.image_shape)
    u = unit_directions(seeds, tuple(z.shape[1:]))
    kw: dict[str, Any] = {"nfe_steps": nfe_steps, "solver": solver, "batch_size": batch_size, "cluster": cluster}
    if base is None:
        base = generate(field, seeds, noise=z, **kw).images
    out = {}
    for e in eps:
        moved = generate(field, seeds, noise=z + e * u, **kw).images
        out[float(e)] = (moved - base).flatten(1).norm(dim=1) / e
    return out


class FiniteDifferenceProbe:
    """Interposes on a field for one batch: returns field(x, t) unchanged and records
    ||field(x + d u, t) - field(x, t)|| / d for a random unit direction u per row.

    The routing state (per-sample generators, step counter, spread accumulator, trace hook) is rewound
    before the perturbed call and restored after it, so the perturbed evaluation sees the same routing
    draws and the trajectory, its traces and its counters of disagreement are those of the unperturbed
    run. ``records`` holds one (t, (B,) ratios) pair per evaluation.
    """

    def __init__(self, field: ModelField | RoutedField, delta: float, generator: torch.Generator) -> None:
        self.field, self.delta, self.generator = field, delta, generator
        self.records: list[tuple[float, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = self.field
        routed = isinstance(f, RoutedField)
        gens = (f.generators or []) if routed else []
        before = [g.get_state() for g in gens]
        saved = (f.step, f.spread, f.spread_evals) if routed else None
        v = f(x, t)
        after = [g.get_state() for g in gens]
        u = torch.randn(x.shape, generator=self.generator).to(x.device)
        u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        for g, state in zip(gens, before):
            g.set_state(state)
        if routed:
            kept = (f.step, f.spread, f.spread_evals, f.on_step)
            f.step, f.on_step = saved[0], None
        v_moved = f(x + self.delta * u, t)
        if routed:
            f.step, f.spread, f.spread_evals, f.on_step = kept
        for g, state in zip(gens, after):
            g.set_state(state)
        self.records.append((float(t[0]), ((v_moved - v).flatten(1).norm(dim=1) / self.delta).cpu()))
        return v


class LipschitzProbes:
    """The ``wrap`` argument of :func:`ddmbench.sampling.sampler.generate`: one probe per batch, directions from one seed."""

    def __init__(self, delta: float, seed: int) -> None:
        self.delta = delta
        self.generator = torch.Generator().manual_seed(seed)
        self.probes: list[FiniteDifferenceProbe] = []

    def __call__(self, field: ModelField | RoutedField) -> FiniteDifferenceProbe:
        probe = FiniteDifferenceProbe(field, self.delta, self.generator)
        self.probes.append(probe)
        return probe

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Times of the evaluations (S,) and the ratios (N, S), batches in sampling order."""
        times = torch.tensor([t for t, _ in self.probes[0].records])
        return times, torch.cat([torch.stack([r for _, r in p.records], dim=1) for p in self.probes])
