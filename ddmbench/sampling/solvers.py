"""ODE solvers for dx/dt = field(x, t) over a decreasing time grid. They know nothing of experts or policies.

Signature shared by every solver: ``solver(field, x, ts, *, callback=None, final_euler=False) -> x`` where ``field`` maps
(x (B, ...), t (B,)) -> dx/dt, ``ts`` is (S + 1,) from t = 1 (noise) to t = 0 (data), and ``callback``
gets ``{"i", "x", "t", "t_next", "v"}`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None] | None


@torch.no_grad()
def euler(field: Field, x: torch.Tensor, ts: torch.Tensor, *, callback: Callback = None,
          final_euler: bool = False) -> torch.Tensor:
    """Explicit Euler: one field evaluation per step (first order)."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = field(x, t.expand(x.shape[0]))  # velocity at the current state
        x = x + (t_next - t) * v            # step along it
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "t_next": t_next, "v": v})
    return x


@torch.no_grad()
def heun(field: Field, x: torch.Tensor, ts: torch.Tensor, *, callback: Callback = None,
         final_euler: bool = False) -> torch.Tensor:
    """Heun's method (explicit trapezoid, Karras et al. 2022 Alg. 1): two evaluations per step (second order).
    ``final_euler``: the last step is Euler's, for fields that cannot be evaluated at the grid's end (t = 0 below
    a DDPM schedule's first timestep), as Karras et al.'s Algorithm 1 does at σ = 0."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        b = x.shape[0]
        v = field(x, t.expand(b))                        # slope at the start of the step
        x_euler = x + (t_next - t) * v                   # Euler predictor
        if final_euler and i == len(ts) - 2:
            x = x_euler
            if callback is not None:
                callback({"i": i, "x": x, "t": t, "t_next": t_next, "v": v})
            continue
        v_next = field(x_euler, t_next.expand(b))        # slope at the predicted end point
        x = x + (t_next - t) * 0.5 * (v + v_next)        # trapezoidal corrector
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "t_next": t_next, "v": 0.5 * (v + v_next)})
    return x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {"euler": euler, "heun": heun}
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "heun": 2}
