"""Noise conventions: what a model trained elsewhere sees at the harness's time t, and its prediction as the
harness's velocity.

The harness integrates the rectified flow (``ddmbench.sampling.flow``): x_t = (1 − t) x_0 + t ε, t = 1 noise,
velocity v = ε − x_0. A model trained under another convention sees its own state x_s = α_s x_0 + σ_s ε at its
own timestep s and predicts ε, x_0, its own velocity or (VP) v = α ε − σ x_0. Two states carry the same
information when their signal-to-noise ratios match, α_s / σ_s = (1 − t) / t (Kingma et al. 2021, "Variational
Diffusion Models", §3; Karras et al. 2022, "EDM", §2): then x_s = c · x_t with c = α_s + σ_s, and the model's
x_0 and ε are the harness's, so its prediction gives the harness's velocity as ε̂ − x̂_0.

- :class:`Flow`: a flow-matching model on the same interpolation family. The state needs no rescaling
  (c = 1); its time may run the other way (data at τ = 1: τ = 1 − t), be scaled (τ × 1000) and its velocity may
  point the other way (``velocity_sign``). A time shift (SD3's σ' = kσ / (1 + (k − 1)σ)) only chooses the
  sampler's grid, not what the model sees, and so is not part of the convention.
- :class:`VariancePreserving`: a discrete schedule given by ``alphas_cumprod`` over timesteps 0…N−1 (DDPM,
  diffusers' schedulers): α_n² = ᾱ_n, σ_n² = 1 − ᾱ_n. The harness time t maps to the fractional timestep whose
  log-SNR, interpolated linearly between the integer timesteps, is the harness's 2 log((1 − t) / t). The model
  serves only the t its timesteps cover: for a linear DDPM schedule (β from 1e-4 to 0.02, N = 1000) about
  t ∈ [0.0099, 0.9937].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Prediction = Literal["velocity", "epsilon", "sample", "v_prediction"]
PREDICTIONS: tuple[str, ...] = ("velocity", "epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class Seen:
    """What a model sees at harness times t (B,): its timestep input, the state's scale c (x_s = c · x_t) and
    its (α_s, σ_s), each (B,)."""

    timestep: torch.Tensor
    scale: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    def state(self, x_t: torch.Tensor) -> torch.Tensor:
        """The model's state x_s = c · x_t (B, ...)."""
        return self.scale.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype) * x_t


@dataclass(frozen=True)
class Flow:
    """x_τ on the harness's interpolation; τ = t (``noise_at`` 1) or 1 − t (0), fed as τ · ``timestep_scale``."""

    noise_at: Literal[0, 1] = 1
    timestep_scale: float = 1.0
    velocity_sign: Literal[1, -1] = 1

    def covers(self) -> tuple[float, float]:
        return 0.0, 1.0

    def at(self, t: torch.Tensor) -> Seen:
        tau = t if self.noise_at == 1 else 1 - t
        return Seen(tau * self.timestep_scale, torch.ones_like(t), 1 - t, t)


@dataclass(frozen=True, eq=False)
class VariancePreserving:
    """A discrete variance-preserving schedule: ``alphas_cumprod`` (N,) ᾱ_n, decreasing in n."""

    alphas_cumprod: torch.Tensor

    def __post_init__(self) -> None:
        a = self.alphas_cumprod.double()
        if a.dim() != 1 or len(a) < 2 or not bool(((a > 0) & (a < 1)).all()) or not bool((a[1:] < a[:-1]).all()):
            raise ValueError("alphas_cumprod must be a decreasing 1-D tensor of at least 2 values in (0, 1)")

    @property
    def log_snr(self) -> torch.Tensor:
        """(N,) log(ᾱ_n / (1 − ᾱ_n)), decreasing in n."""
        a = self.alphas_cumprod.double()
        return torch.log(a) - torch.log1p(-a)

    def covers(self) -> tuple[float, float]:
        """The harness times the timesteps span: t = 1 / (1 + exp(λ / 2)) at the first and the last timestep."""
        lam = self.log_snr
        return float(torch.sigmoid(-lam[0] / 2)), float(torch.sigmoid(-lam[-1] / 2))

    def at(self, t: torch.Tensor) -> Seen:
        lo, hi = self.covers()
        if bool(((t < lo - 1e-6) | (t > hi + 1e-6)).any()):
            raise ValueError(f"t outside [{lo:.4g}, {hi:.4g}], the range this schedule's timesteps cover")
        t64 = t.double()
        lam = 2 * (torch.log1p(-t64) - torch.log(t64))                   # the harness's log-SNR at t
        knots = -self.log_snr                                            # increasing in n
        n = torch.searchsorted(knots, -lam).clamp(1, len(knots) - 1)     # knots[n - 1] <= -lam <= knots[n]
        frac = (-lam - knots[n - 1]) / (knots[n] - knots[n - 1])
        timestep = (n - 1 + frac).clamp(0, len(knots) - 1)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return Seen(timestep.to(t.dtype), (alpha + sigma).to(t.dtype), alpha.to(t.dtype), sigma.to(t.dtype))

    @staticmethod
    def from_betas(beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear",
                   num_train_timesteps: int = 1000) -> VariancePreserving:
        """The schedule of a diffusers scheduler config (``beta_schedule``: linear, scaled_linear, squaredcos_cap_v2)."""
        n = num_train_timesteps
        if schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
        elif schedule == "squaredcos_cap_v2":
            def abar(s: float) -> float:
                return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule {schedule!r} is not one of linear, scaled_linear, squaredcos_cap_v2")
        return VariancePreserving(torch.cumprod(1 - betas, 0))


Convention = Flow | VariancePreserving


def to_velocity(y: torch.Tensor, prediction: Prediction, x_s: torch.Tensor, seen: Seen, convention: Convention
                ) -> torch.Tensor:
    """The harness's velocity ε̂ − x̂_0 from a model's output ``y`` at its state ``x_s`` (B, ...)."""
    shape = (-1, *([1] * (x_s.dim() - 1)))
    alpha, sigma = seen.alpha.view(shape).to(y.dtype), seen.sigma.view(shape).to(y.dtype)
    if prediction == "velocity":
        if not isinstance(convention, Flow):
            raise ValueError("a 'velocity' prediction needs a flow convention; a VP model predicts 'v_prediction'")
        return convention.velocity_sign * y
    if prediction == "epsilon":
        eps = y
        x0 = (x_s - sigma * eps) / alpha
    elif prediction == "sample":
        x0 = y
        eps = (x_s - alpha * x0) / sigma
    elif prediction == "v_prediction":          # v = α ε − σ x_0, with α² + σ² = 1
        if not isinstance(convention, VariancePreserving):
            raise ValueError("a 'v_prediction' model needs a variance-preserving convention")
        x0 = alpha * x_s - sigma * y
        eps = sigma * x_s + alpha * y
    else:
        raise ValueError(f"prediction {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    return eps - x0
