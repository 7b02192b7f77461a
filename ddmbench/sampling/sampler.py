"""From seeds to images: per-sample noise and routing keys, batching, the field, the solver.

One stream per sample (as in EDM's ``StackedRandomGenerator``): image i depends on seed i only, not on
the batch size or on which other seeds are sampled with it. The initial noise comes from a generator
seeded with the seed; routing draws are keyed by (seed, routing-clock cell) (``ddmbench.streams``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddmbench import streams
from ddmbench.sampling.field import ModelField, RoutedField, SampleContext
from ddmbench.sampling.flow import time_grid
from ddmbench.sampling.observers import Counting, Observer, Spread, observed
from ddmbench.sampling.solvers import EVALS_PER_STEP, SOLVERS


def noise_for(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) standard normal noise, shape = the image shape (C, H, W); row i from its own generator
    seeded with seeds[i] (so image i's noise does not depend on the batch it is drawn in)."""
    return streams.initial_noise(seeds, shape)


def draw_clusters(seeds: Sequence[int], prior: torch.Tensor) -> torch.Tensor:
    """(N,) cluster per sample drawn from ``prior`` (K,) (cluster sizes), a keyed draw per seed."""
    return streams.oracle_clusters(seeds, prior)


@dataclass
class SampleResult:
    images: torch.Tensor        # (N, C, H, W) float in model space, (C, H, W) = field.image_shape
    seconds: float
    nfe_per_sample: int
    expert_evals: list[int]     # rows evaluated per expert (the monolith counts as one expert)
    router_evals: int
    disagreement: torch.Tensor | None = None  # (N,) mean policy-weighted expert spread per evaluation (routed)


def generate(field: ModelField | RoutedField, seeds: Sequence[int], *, nfe_steps: int, solver: str,
             batch_size: int, cluster: torch.Tensor | None = None, observers: Sequence[Observer] = (),
             progress: Callable[[int], None] | None = None, device: torch.device | str = "cpu",
             noise: torch.Tensor | None = None, t_range: tuple[float, float] | None = None) -> SampleResult:
    """Integrate the field from noise (t = 1) to data (t = 0) for every seed, in batches.

    Every evaluation's :class:`~ddmbench.sampling.field.Routing` record goes to the cost counter, the
    disagreement spread (routed fields) and the given ``observers`` (e.g. a
    :class:`~ddmbench.sampling.traces.TraceRecorder`). Noise and routing draws are computed on the CPU
    whatever the device, so a seed gives the same draws on every device; the noise has the field's
    ``image_shape`` (that of the networks); the images are returned on the CPU. ``noise`` (N, C, H, W)
    replaces the seeds' initial noise; the routing draws still come from the seeds and the times, so a
    perturbed start, another step count or a second call replays the same routing randomness. ``t_range``: the
    times every network of the field serves (:func:`~ddmbench.sampling.flow.time_grid`; default the field's
    ``time_range``); below t = 1 the start
    is the noise scaled to the state's noise level there, and a grid ending below the range ends in an Euler step.
    """
    solve = SOLVERS[solver]
    t_range = field.time_range if t_range is None else t_range
    ts = time_grid(nfe_steps, device, t_range)
    start_scale, final_euler = t_range[1], t_range[0] > 0
    counting, spread = Counting(field.num_experts), Spread()
    watchers: list[Observer] = [counting, *([spread] if field.routed else []), *observers]
    out = []
    start = time.perf_counter()
    for lo in range(0, len(seeds), batch_size):
        batch_seeds = seeds[lo:lo + batch_size]
        x = (noise_for(batch_seeds, field.image_shape) if noise is None else noise[lo:lo + batch_size]).to(device)
        if start_scale != 1.0:
            x = start_scale * x
        ctx = SampleContext.of(batch_seeds, None if cluster is None else cluster[lo:lo + batch_size])
        for watcher in watchers:
            watcher.start(len(batch_seeds))
        out.append(solve(observed(field.route, ctx, watchers), x, ts, final_euler=final_euler).cpu())
        if progress is not None:
            progress(len(batch_seeds))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nfe = nfe_steps * EVALS_PER_STEP[solver] - (EVALS_PER_STEP[solver] - 1) * final_euler
    return SampleResult(torch.cat(out), seconds, nfe, counting.expert_evals,
                        counting.router_evals, spread.result() if field.routed else None)
