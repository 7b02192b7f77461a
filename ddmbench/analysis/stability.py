"""Trajectory sensitivity: perturbation amplification of the sampler, the local Lipschitz constant of the
combined field, and the routing jump.

Amplification (docs/design.md, "Measurements"): perturb the initial noise z of each seed by eps * u with
||u|| = 1 (u drawn per seed), integrate the same policy with the same routing randomness (the routing draws
are keyed by the seed and the time, not by the noise: the sampler is simply called again), and report
||x0(z + eps u) - x0(z)|| / eps. A smooth field gives a finite ratio that barely depends on eps; a routing
switch (a discontinuity of the field) shows up as ratios that grow as eps shrinks.

Local Lipschitz: the top singular value of the Jacobian dv/dx of the combined field at a state, with the
routing weights w held at the state's routing (so it is the smooth part of the field: the experts' Jacobians
mixed by w), by power iteration on J^T J with two reverse passes per iteration.

Routing jump: ||v(x + d u) - v(x)|| / d for a keyed random unit direction u at every evaluation, with the
same routing draws. Where no routing decision flips within d it is about ||J u|| (at most the Lipschitz
constant); where one flips it is about |jump| / d, so it measures the jumps across routing boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddmbench import streams
from ddmbench.sampling.field import ModelField, RoutedField, Routing
from ddmbench.sampling.sampler import generate, noise_for

Field = ModelField | RoutedField

CPU_LIPSCHITZ_ROWS = 32
"""Rows per ``local_lipschitz`` call on the CPU. Its graphs (the forward, and the backward with its own graph)
are kept for all iterations: at 250 rows (``sample.batch_size``) the full K = 8 policy took 55.1 s and peaked
at 9.9 GB, at 32 rows 25.6 s and 2.0 GB (1 thread, 2-core AMD EPYC; docs/speed.md)."""


def unit_directions(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) directions of unit Euclidean norm, row i from its seed's amplification stream."""
    return streams.amplification_directions(seeds, shape)


def amplification(field: Field, seeds: Sequence[int], eps: Sequence[float], *, nfe_steps: int, solver: str,
                  batch_size: int, cluster: torch.Tensor | None = None, base: torch.Tensor | None = None,
                  device: torch.device | str = "cpu") -> dict[float, torch.Tensor]:
    """eps -> (N,) ||x0(z + eps u) - x0(z)|| / eps per seed (Euclidean norm over all pixels, model space).

    base: the unperturbed samples x0(z) (N, C, H, W) if already drawn with the same settings.
    """
    z = noise_for(seeds, field.image_shape)
    u = unit_directions(seeds, tuple(z.shape[1:]))
    kw: dict[str, Any] = {"nfe_steps": nfe_steps, "solver": solver, "batch_size": batch_size, "cluster": cluster,
                          "device": device}
    if base is None:
        base = generate(field, seeds, noise=z, **kw).images
    out = {}
    for e in eps:
        moved = generate(field, seeds, noise=z + e * u, **kw).images
        out[float(e)] = (moved - base).flatten(1).norm(dim=1) / e
    return out


def _row_norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1).view(-1, *([1] * (a.dim() - 1)))


def local_lipschitz(field: Field, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, seeds: torch.Tensor, *,
                    iterations: int) -> torch.Tensor:
    """(B,) top singular value of the Jacobian of x -> field.combine(x, t, w) at each row of x (B, C, H, W).

    t: (B,) times; w: (B, K) routing weights held fixed (the state's own routing: the policy's selection is
    piecewise constant in x, so this is the Jacobian wherever the field is differentiable); seeds: (B,) keys of
    the start vectors. Each iteration is u <- J^T J u / ||J^T J u||; the estimate sqrt(||J^T J u||) for the
    last unit u is a lower bound that rises to sigma_max. The networks act row by row, so the batch's Jacobian
    is block diagonal and every row iterates on its own block.

    J u and J^T (J u) are both reverse passes over graphs built once per call: J^T p is linear in a probe p,
    so J u is the gradient in p of <J^T p, u> (reverse over reverse). Forward mode (``torch.func.jvp``) gives
    the same J u, but on the CPU its convolution and group-norm formulas also run on the parameters' zero
    tangents (3 convolutions per layer where the primal has 1): at 32 rows per call the forward-mode pass
    took 38.8 s where this one takes 25.6 s (full policy, K = 8, 320 states, 1 thread); the values agree to
    9e-7 relative (docs/speed.md).
    """
    if iterations < 1:
        raise ValueError(f"the power iteration needs at least one iteration, got {iterations}")
    u = streams.unit_keyed_directions(streams.POWER_START, seeds, t, tuple(x.shape[1:])).to(x)
    # attention in its plain (math) form: the fused CPU kernels have no second derivative (a diffusers UNet's)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        x = x.detach().requires_grad_(True)
        v = field.combine(x, t, w)                                                   # (B, C, H, W)
        if not v.requires_grad:                                                      # v does not depend on x
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        probe = torch.zeros_like(v, requires_grad=True)
        (jt_probe,) = torch.autograd.grad(v, x, probe, create_graph=True)           # J^T probe, linear in probe
        for _ in range(iterations):
            (ju,) = torch.autograd.grad(jt_probe, probe, u, retain_graph=True)       # J u        (B, C, H, W)
            (jtju,) = torch.autograd.grad(v, x, ju, retain_graph=True)               # J^T J u    (B, C, H, W)
            norm = _row_norm(jtju)
            u = jtju / norm.clamp_min(1e-30)
    return norm.flatten().sqrt().detach()


def lipschitz_along(field: Field, states: torch.Tensor, times: torch.Tensor, w: torch.Tensor, seeds: torch.Tensor,
                    *, iterations: int, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(M, S) local Lipschitz constants along traced trajectories: states (M, S, C, H, W) at times (S,) with
    the routing weights w (M, S, K) the sampler used there; seeds (M,). Computed on ``device``, returned on the CPU."""
    m, s = states.shape[:2]
    flat_x, flat_w = states.flatten(0, 1).to(device), w.flatten(0, 1).to(device)             # (M*S, ...)
    flat_t = times.repeat(m).to(device, states.dtype)
    flat_seed = seeds.repeat_interleave(s)
    out = [local_lipschitz(field, flat_x[i:i + batch_size], flat_t[i:i + batch_size], flat_w[i:i + batch_size],
                           flat_seed[i:i + batch_size], iterations=iterations).cpu()
           for i in range(0, m * s, batch_size)]
    return torch.cat(out).view(m, s)


class RoutingJump:
    """Observer of a sampling run (``generate(..., observers=[RoutingJump(field, delta)])``): at every
    evaluation, ||v(x + delta u, t) - v(x, t)|| / delta per row with u a unit direction keyed by (seed, t), and
    whether the set of selected experts differs at x + delta u. It calls the stateless field once more with
    the same context, so the trajectory, its counters and its traces are untouched (the extra evaluations
    are not cost).

    ``result()``: times (S,), ratios (N, S), switched (N, S) bool, samples in sampling order.
    """

    def __init__(self, field: Field, delta: float) -> None:
        self.field, self.delta = field, delta
        self._batches: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._t: list[float] = []

    def start(self, rows: int) -> None:
        self._batches.append(([], []))

    def __call__(self, r: Routing) -> None:
        if r.ctx is None:
            raise ValueError("the routing-jump probe needs the sample context (seeds) of the evaluation")
        if len(self._batches) == 1:
            self._t.append(float(r.t[0]))
        u = streams.unit_keyed_directions(streams.JUMP_DIRECTION, r.ctx.seed, r.t, tuple(r.x.shape[1:])).to(r.x)
        moved = self.field.route(r.x + self.delta * u, r.t, r.ctx)
        ratios, switched = self._batches[-1]
        ratios.append(((moved.v - r.v).flatten(1).norm(dim=1) / self.delta).cpu())
        switched.append(((moved.w > 0) != (r.w > 0)).any(dim=1).cpu())

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.tensor(self._t), torch.cat([torch.stack(r, dim=1) for r, _ in self._batches]),
                torch.cat([torch.stack(s, dim=1) for _, s in self._batches]))
