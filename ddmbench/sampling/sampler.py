"""From seeds to images: per-sample noise and routing generators, batching, the field, the solver.

One generator per sample (as in EDM's ``StackedRandomGenerator``): image i depends on seed i only,
not on the batch size or on which other seeds are sampled with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.flow import time_grid
from ddmbench.sampling.solvers import EVALS_PER_STEP, SOLVERS, Field
from ddmbench.sampling.traces import TraceRecorder

ROUTING_STREAM = 0x5EED_0F_0A  # offsets routing draws from the noise stream of the same seed


def noise_for(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) standard normal noise, shape = the image shape (C, H, W); row i from its own generator
    seeded with seeds[i] (so image i's noise does not depend on the batch it is drawn in)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def routing_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s) + ROUTING_STREAM) for s in seeds]


def draw_clusters(seeds: Sequence[int], prior: torch.Tensor) -> torch.Tensor:
    """(N,) cluster per sample drawn from ``prior`` (K,) (cluster sizes), one generator per seed."""
    return torch.cat([torch.multinomial(prior, 1, generator=g) for g in routing_generators(seeds)]).long()


@dataclass
class SampleResult:
    images: torch.Tensor        # (N, C, H, W) float in model space, (C, H, W) = field.image_shape
    seconds: float
    nfe_per_sample: int
    expert_evals: list[int]     # rows evaluated per expert (the monolith counts as one expert)
    router_evals: int
    disagreement: torch.Tensor | None = None  # (N,) mean policy-weighted expert spread per evaluation (routed)


def generate(field: ModelField | RoutedField, seeds: Sequence[int], *, nfe_steps: int, solver: str,
             batch_size: int, cluster: torch.Tensor | None = None, recorder: TraceRecorder | None = None,
             probe_n: int = 0, progress: Callable[[int], None] | None = None,
             device: torch.device | str = "cpu", noise: torch.Tensor | None = None,
             wrap: Callable[[Field], Field] | None = None) -> SampleResult:
    """Integrate the field from noise (t = 1) to data (t = 0) for every seed, in batches.

    With a ``recorder`` (routed fields only) every evaluation's routing is traced, and for the first
    ``probe_n`` samples also the states and every expert's prediction. Noise and routing draws come from
    CPU generators whatever the device, so a seed gives the same draws on every device; the noise has the
    field's ``image_shape`` (that of the networks, i.e. of the dataset they were trained on); the images
    are returned on the CPU. ``noise`` (N, C, H, W) replaces the seeds' initial noise (the routing draws
    still come from the seeds, so a perturbed start replays the same routing randomness); ``wrap`` lets
    an analysis interpose on every field evaluation (e.g. a finite-difference probe).
    """
    solve = SOLVERS[solver]
    ts = time_grid(nfe_steps, device)
    out, spreads = [], []
    field.reset_counters()  # the result reports this call's work only
    if isinstance(field, RoutedField):
        field.on_step = recorder
    start = time.perf_counter()
    for lo in range(0, len(seeds), batch_size):
        batch_seeds = seeds[lo:lo + batch_size]
        x = (noise_for(batch_seeds, field.image_shape) if noise is None else noise[lo:lo + batch_size]).to(device)
        if isinstance(field, RoutedField):
            n_probe = max(0, min(probe_n - lo, len(batch_seeds)))
            probe = torch.arange(n_probe, device=device) if recorder is not None else None
            field.begin_batch(routing_generators(batch_seeds),
                              None if cluster is None else cluster[lo:lo + batch_size], probe)
            if recorder is not None:
                recorder.begin_batch(len(batch_seeds))
        out.append(solve(field if wrap is None else wrap(field), x, ts).cpu())
        if isinstance(field, RoutedField) and field.spread is not None:
            spreads.append((field.spread / field.spread_evals).float().cpu())
        if progress is not None:
            progress(len(batch_seeds))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if isinstance(field, RoutedField):
        expert_evals, router_evals = list(field.expert_evals), field.router_evals
    else:
        expert_evals, router_evals = [field.evals], 0
    return SampleResult(torch.cat(out), seconds, nfe_steps * EVALS_PER_STEP[solver], expert_evals, router_evals,
                        torch.cat(spreads) if spreads else None)
