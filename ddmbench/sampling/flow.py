"""The flow-matching convention, in one place (rectified flow, Liu et al. 2022; Lipman et al. 2023).

Time runs from t = 0 (data) to t = 1 (Gaussian noise):

    x_t = (1 - t) * x_0 + t * eps,        eps ~ N(0, I)
    v(x_t, t) = d x_t / d t = eps - x_0   (the velocity target)

Sampling integrates dx/dt = v from t = 1 down to t = 0. The denoised estimate at (x_t, t) is
x̂_0 = x_t - t * v.
"""

from __future__ import annotations

import torch


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) so t broadcasts over image dims."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t for data x0 (B, C, H, W), noise eps (B, C, H, W) and times t (B,) in [0, 1]."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The conditional velocity eps - x0 (B, C, H, W)."""
    return eps - x0


def denoised(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x̂_0 = x_t - t * v (B, C, H, W)."""
    return x_t - _bcast(t, x_t) * v


def time_grid(nfe_steps: int, device: torch.device | str = "cpu", t_range: tuple[float, float] = (0.0, 1.0)
              ) -> torch.Tensor:
    """The solver's grid from noise to data, (nfe_steps + 1,). Over the whole [0, 1]: uniform from t = 1 to 0.
    Over a narrower range [lo, hi] (experts that serve only those times, such as a DDPM schedule's): uniform from
    hi to lo in nfe_steps points, then t = 0, so every evaluation falls inside the range and the last step lands
    on the data from lo."""
    lo, hi = t_range
    if (lo, hi) == (0.0, 1.0):
        return torch.linspace(1.0, 0.0, nfe_steps + 1, device=device)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"time range [{lo}, {hi}] is not inside [0, 1]")
    return torch.cat([torch.linspace(hi, lo, nfe_steps, device=device), torch.zeros(1, device=device)])


def sample_training_pair(x0: torch.Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw t ~ U(0, 1) and eps for a batch; return (x_t, t, target velocity).

    shard = (rank, world): x0 (B, C, H, W) is rank's slice of a global batch of world x B rows; eps and t
    are drawn for the whole global batch and sliced, so a row's noise does not depend on the number of
    processes (a DDP run draws exactly what a one-process run with the same global batch draws)."""
    rank, world = shard
    b = x0.shape[0]
    rows = slice(rank * b, (rank + 1) * b)
    eps = torch.randn((world * b, *x0.shape[1:]), generator=generator, device=x0.device, dtype=x0.dtype)[rows]
    t = torch.rand(world * b, generator=generator, device=x0.device, dtype=x0.dtype)[rows]
    return interpolate(x0, eps, t), t, velocity_target(x0, eps)
