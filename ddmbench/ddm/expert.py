"""An expert of a DDM as the harness calls it: any network (x, timestep[, cond]) → prediction, declared with
what it predicts and under which noise convention, wrapped into the harness's velocity model (x_t, t) → v.

A DDM may mix experts: ε-prediction under a DDPM schedule beside flow-matching velocity experts (Bagel et al.'s
heterogeneous DDM converts each to velocity in the same way). ``out_channels`` keeps the first C output channels
of a network that also predicts its variance (a DiT's learned sigma: 2C channels out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddmbench.ddm.conventions import PREDICTIONS, Convention, Flow, Prediction, to_velocity

Call = Callable[[Any, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def call_plain(model: Any, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
    """``model(x, timestep)``, or ``model(x, timestep, cond)`` when a condition is given."""
    return model(x, timestep) if cond is None else model(x, timestep, cond)


@dataclass(frozen=True)
class ExpertSpec:
    """What an expert predicts, under which convention, and how many of its output channels are the prediction."""

    prediction: Prediction = "velocity"
    convention: Convention = field(default_factory=Flow)
    out_channels: int | None = None

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction {self.prediction!r} is not one of {', '.join(PREDICTIONS)}")

    def covers(self) -> tuple[float, float]:
        """The harness times this expert can serve."""
        return self.convention.covers()


class HarnessVelocity(nn.Module):
    """(x_t (B, ...), t (B,)[, cond]) → the harness's velocity (B, ...), from ``model`` under ``spec``: the state is
    rescaled to the model's (x_s = c · x_t), the model called at its own timestep through ``call``, its extra
    output channels dropped and its prediction converted (``ddmbench.ddm.conventions``)."""

    def __init__(self, model: Any, spec: ExpertSpec, call: Call = call_plain) -> None:
        super().__init__()
        self.model, self.spec, self.call = model, spec, call
        self.image_shape = getattr(model, "image_shape", None)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        seen = self.spec.convention.at(t)
        x_s = seen.state(x_t)
        y = self.call(self.model, x_s, seen.timestep, cond)
        if self.spec.out_channels is not None:
            y = y[:, :self.spec.out_channels]
        return to_velocity(y, self.spec.prediction, x_s, seen, self.spec.convention)


def shared_range(specs: list[ExpertSpec]) -> tuple[float, float]:
    """The harness times every expert serves: (largest lower end, smallest upper end); ValueError if empty."""
    lo, hi = max(s.covers()[0] for s in specs), min(s.covers()[1] for s in specs)
    if lo >= hi:
        raise ValueError(f"the experts share no time range (lower end {lo:.4g} ≥ upper end {hi:.4g})")
    return lo, hi
