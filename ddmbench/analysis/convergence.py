"""Numerical convergence of a policy's sampler: error against a much finer reference over a ladder of step counts.

err(n) = mean over seeds of ||x0(n steps) - x0(reference steps)|| / sqrt(D) (RMS per pixel, model space),
same policy, same seeds, same routing randomness: routing draws are keyed by (seed, routing-clock cell of t),
so every rung and the reference integrate one and the same field (common random numbers; a stochastic
policy such as sample-k is one well-defined ODE that the solver converges to). The empirical order is the
least-squares slope of log err against log(1 / n): 1 for Euler and 2 for Heun on a smooth field. The
reference (``reference_factor`` x the configured steps, 16 shipped) must be much finer than the ladder: its
own error enters every rung, and with the 3-rung ladder nfe/4..nfe Euler reads order about 1 + log4(1 + 3/(4f - 4))
against a reference f times finer (1.16 at f = 4, 1.035 at f = 16). A routing switch between neighbouring
step counts (a discontinuous field) lowers the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.sampler import generate


def ladder(nfe_steps: int, rungs: int = 3) -> list[int]:
    """Step counts nfe/2^(rungs-1), ..., nfe/2, nfe (at least 1, distinct, ascending)."""
    return sorted({max(1, nfe_steps // 2 ** i) for i in range(rungs)})


def empirical_order(steps: Sequence[int], errors: Sequence[float]) -> float | None:
    """Slope of log(err) against log(1/n); None with fewer than two positive errors."""
    pairs = [(n, e) for n, e in zip(steps, errors) if e > 0]
    if len(pairs) < 2:
        return None
    x = np.log([1.0 / n for n, _ in pairs])
    y = np.log([e for _, e in pairs])
    return float(np.polyfit(x, y, 1)[0])


def convergence(field: ModelField | RoutedField, seeds: Sequence[int], *, nfe_steps: int, solver: str,
                reference_factor: int, rungs: int, batch_size: int, cluster: torch.Tensor | None = None,
                at_nfe: torch.Tensor | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Errors of the ladder's step counts against ``reference_factor`` x ``nfe_steps`` steps.

    at_nfe: the samples at ``nfe_steps`` (N, C, H, W) if already drawn with the same settings.

    Returns steps, rms_error (per rung, mean over seeds), error_at_nfe (N,) per-seed error at the
    configured steps, reference_steps and order.
    """
    kw: dict[str, Any] = {"solver": solver, "batch_size": batch_size, "cluster": cluster, "device": device}
    ref_steps = nfe_steps * reference_factor
    reference = generate(field, seeds, nfe_steps=ref_steps, **kw).images
    steps = ladder(nfe_steps, rungs)
    per_seed = {}
    for n in steps:
        x0 = at_nfe if n == nfe_steps and at_nfe is not None else generate(field, seeds, nfe_steps=n, **kw).images
        per_seed[n] = ((x0 - reference).flatten(1).pow(2).mean(1)).sqrt()   # (N,) RMS per pixel
    errors = [float(per_seed[n].mean()) for n in steps]
    return {"steps": steps, "rms_error": errors, "reference_steps": ref_steps,
            "error_at_nfe": per_seed[nfe_steps], "order": empirical_order(steps, errors)}
