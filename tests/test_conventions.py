"""Noise conventions, known answers on Gaussian data: the exact ε-, x_0- and v-predictors of a DDPM-schedule model
and the exact velocity of a flow model that runs its time the other way, each written in its own model's terms
(its state, its timestep, its alphas_cumprod), give the harness's exact velocity through the converters; without
the state rescaling they do not; a DDM of mixed experts samples the trajectory of its all-velocity twin."""

from __future__ import annotations

import pytest
import torch

from ddmbench.ddm.conventions import Flow, VariancePreserving
from ddmbench.ddm.expert import ExpertSpec, HarnessVelocity, shared_range
from ddmbench.sampling.field import RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.solvers import euler

D = 6
S = 0.7                                                   # per-dimension std of the data


def gaussian_mean(seed: int) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def harness_velocity(x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """E[ε − x_0 | x_t] for x_0 ~ N(mu, S² I) under x_t = (1 − t) x_0 + t ε; x (B, ..., D)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * S ** 2 + t ** 2
    r = x - (1 - t) * mu
    return t * r / var - (mu + (1 - t) * S ** 2 * r / var)


class DDPMExact(torch.nn.Module):
    """The exact prediction of a model trained on x_n = √ᾱ_n x_0 + √(1 − ᾱ_n) ε at timesteps n: at the integer
    timesteps only (``knots_only``, the known-answer tests), or also between them, where ᾱ is the one whose
    log-SNR the schedule interpolates linearly between its integer timesteps."""

    def __init__(self, abar: torch.Tensor, mu: torch.Tensor, prediction: str, knots_only: bool = True) -> None:
        super().__init__()
        self.abar, self.mu, self.prediction, self.knots_only = abar, mu, prediction, knots_only

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (x.dim() - 1)))
        if self.knots_only:
            n = timestep.round().long()
            assert torch.allclose(timestep, n.to(timestep.dtype), atol=1e-6), "evaluated off the integer timesteps"
            abar = self.abar[n].to(x.dtype)
        else:
            lam = torch.log(self.abar) - torch.log1p(-self.abar)
            n = timestep.floor().long().clamp(0, len(lam) - 2)
            frac = timestep.double() - n.double()
            abar = torch.sigmoid(lam[n] + frac * (lam[n + 1] - lam[n])).to(x.dtype)
        a, s = abar.sqrt().view(shape), (1 - abar).sqrt().view(shape)
        var = a ** 2 * S ** 2 + s ** 2
        r = x - a * self.mu
        eps, x0 = s * r / var, self.mu + a * S ** 2 * r / var
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[self.prediction]


class ReversedFlowExact(torch.nn.Module):
    """The exact velocity of a flow model with data at τ = 1: x_τ = τ x_0 + (1 − τ) ε, u = dx_τ/dτ = x_0 − ε, fed
    τ × 1000."""

    def __init__(self, mu: torch.Tensor) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        tau = (timestep / 1000).view(-1, *([1] * (x.dim() - 1)))
        var = tau ** 2 * S ** 2 + (1 - tau) ** 2
        r = x - tau * self.mu
        return (self.mu + tau * S ** 2 * r / var) - (1 - tau) * r / var


LINEAR = VariancePreserving.from_betas(1e-4, 0.02, "linear", 1000)
REVERSED = Flow(noise_at=0, timestep_scale=1000.0, velocity_sign=-1)


def knot_times(schedule: VariancePreserving, steps: list[int]) -> torch.Tensor:
    """Harness times whose SNR is that of the given integer timesteps."""
    return torch.sigmoid(-schedule.log_snr[steps] / 2)


def test_a_linear_ddpm_schedule_covers_the_times_it_was_trained_on() -> None:
    lo, hi = LINEAR.covers()
    assert lo == pytest.approx(0.00990, abs=1e-4) and hi == pytest.approx(0.9937, abs=1e-3)
    assert Flow().covers() == (0.0, 1.0) and shared_range([ExpertSpec(), ExpertSpec("epsilon", LINEAR)]) == (lo, hi)
    with pytest.raises(ValueError, match="outside"):
        LINEAR.at(torch.tensor([0.999]))
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.equal(LINEAR.alphas_cumprod, abar)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_exact_ddpm_predictors_give_the_exact_harness_velocity(prediction: str, schedule: str) -> None:
    vp = VariancePreserving.from_betas(1e-4, 0.02, schedule, 1000)
    mu = gaussian_mean(0)
    steps = [0, 1, 10, 250, 500, 900, 999]
    t = knot_times(vp, steps)
    x = torch.randn(len(steps), D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.3
    expert = HarnessVelocity(DDPMExact(vp.alphas_cumprod, mu, prediction), ExpertSpec(prediction, vp))
    assert torch.allclose(vp.at(t).timestep, torch.tensor(steps, dtype=torch.float64), atol=1e-6)
    torch.testing.assert_close(expert(x, t), harness_velocity(x, t, mu), rtol=1e-9, atol=1e-9)


def test_a_reversed_rescaled_flow_gives_the_exact_harness_velocity() -> None:
    mu = gaussian_mean(2)
    t = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.9, 1.0], dtype=torch.float64)
    x = torch.randn(len(t), D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expert = HarnessVelocity(ReversedFlowExact(mu), ExpertSpec("velocity", REVERSED))
    torch.testing.assert_close(expert(x, t), harness_velocity(x, t, mu), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_without_the_state_rescaling_the_conversion_is_wrong(prediction: str) -> None:
    """Negative control: feed the model the harness's x_t instead of c · x_t and the velocity is off."""
    mu = gaussian_mean(0)
    steps = [10, 250, 500, 900]
    t = knot_times(LINEAR, steps)
    x = torch.randn(len(steps), D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unscaled = VariancePreserving(LINEAR.alphas_cumprod)
    seen = LINEAR.at(t)
    object.__setattr__(unscaled, "at", lambda t_: type(seen)(seen.timestep, torch.ones_like(t_), seen.alpha, seen.sigma))
    wrong = HarnessVelocity(DDPMExact(LINEAR.alphas_cumprod, mu, prediction), ExpertSpec(prediction, unscaled))(x, t)
    assert (wrong - harness_velocity(x, t, mu)).abs().max() > 1e-2


def test_conventions_refuse_what_they_cannot_convert() -> None:
    with pytest.raises(ValueError, match="flow convention"):
        HarnessVelocity(lambda x, s: x, ExpertSpec("velocity", LINEAR))(torch.ones(1, D), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="variance-preserving"):
        HarnessVelocity(lambda x, s: x, ExpertSpec("v_prediction", Flow()))(torch.ones(1, D), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="not one of"):
        ExpertSpec("score")
    with pytest.raises(ValueError, match="decreasing"):
        VariancePreserving(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="beta_schedule"):
        VariancePreserving.from_betas(schedule="sigmoid")
    with pytest.raises(ValueError, match="share no time range"):
        shared_range([ExpertSpec("epsilon", VariancePreserving(torch.tensor([0.9, 0.8]))),
                      ExpertSpec("epsilon", VariancePreserving(torch.tensor([0.1, 0.05])))])


def test_learned_variance_channels_are_dropped() -> None:
    mu = gaussian_mean(0)

    def with_sigma(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return torch.cat([DDPMExact(LINEAR.alphas_cumprod, mu, "epsilon")(x, timestep), torch.full_like(x, 9.0)], 1)
    t = knot_times(LINEAR, [100, 700])
    x = torch.randn(2, D, dtype=torch.float64)
    got = HarnessVelocity(with_sigma, ExpertSpec("epsilon", LINEAR, out_channels=D))(x, t)
    torch.testing.assert_close(got, harness_velocity(x, t, mu), rtol=1e-9, atol=1e-9)


def test_a_ddm_of_mixed_experts_samples_the_trajectory_of_its_all_velocity_twin() -> None:
    """Two Gaussian clusters: expert 0 an ε-model under the DDPM schedule (its twin: the harness's own velocity),
    expert 1 a reversed flow model; the full ensemble under a fixed router, Euler over the experts' shared range
    at the schedule's own timesteps, then a last step to t = 0."""
    mus = [gaussian_mean(0) + 2.0, gaussian_mean(4) - 2.0]
    mixed = [HarnessVelocity(DDPMExact(LINEAR.alphas_cumprod, mus[0], "epsilon"), ExpertSpec("epsilon", LINEAR)),
             HarnessVelocity(ReversedFlowExact(mus[1]), ExpertSpec("velocity", REVERSED))]
    twins = [lambda x, t, mu=mu: harness_velocity(x, t, mu) for mu in mus]

    def router(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], 1)
    lo, hi = shared_range([ExpertSpec("epsilon", LINEAR), ExpertSpec("velocity", REVERSED)])
    ts = torch.cat([knot_times(LINEAR, list(range(999, -1, -111))), torch.zeros(1, dtype=torch.float64)])
    assert lo <= float(ts[-2]) and float(ts[0]) <= hi
    x = torch.randn(16, 1, 1, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)   # (B, C, H, W)
    full = parse_policy("full")
    a = euler(RoutedField(mixed, router, full, image_shape=(1, 1, D)), x, ts)
    b = euler(RoutedField(twins, router, full, image_shape=(1, 1, D)), x, ts)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_the_grid_of_a_narrower_range_evaluates_only_inside_it() -> None:
    from ddmbench.sampling.flow import time_grid

    assert torch.equal(time_grid(4), torch.linspace(1.0, 0.0, 5))                    # the harness's own range
    lo, hi = LINEAR.covers()
    ts = time_grid(5, t_range=(lo, hi))
    assert len(ts) == 6 and float(ts[0]) == pytest.approx(hi) and float(ts[-2]) == pytest.approx(lo) and ts[-1] == 0
    with pytest.raises(ValueError, match="not inside"):
        time_grid(3, t_range=(0.5, 1.5))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampling_a_ddpm_expert_stays_inside_its_range_and_counts_its_evaluations(solver: str) -> None:
    """A Heun step's corrector at t = 0 would be outside a DDPM schedule's range: the last step is Euler's, the
    count says so, and the mixed DDM still samples its all-velocity twin's images."""
    from ddmbench.sampling.field import ModelField
    from ddmbench.sampling.sampler import generate

    mu = gaussian_mean(0)
    lo, hi = LINEAR.covers()
    seen: list[float] = []

    class Watched(HarnessVelocity):
        def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
            seen.extend(t.tolist())
            return super().forward(x, t, cond)
    expert = Watched(DDPMExact(LINEAR.alphas_cumprod, mu.float(), "epsilon", knots_only=False),
                     ExpertSpec("epsilon", LINEAR))
    twin = ModelField(lambda x, t: harness_velocity(x, t, mu.float()), image_shape=(1, 1, D))
    field = ModelField(lambda x, t: expert(x, t), image_shape=(1, 1, D))
    kw = {"nfe_steps": 4, "solver": solver, "batch_size": 8, "t_range": (lo, hi)}
    a, b = generate(field, list(range(8)), **kw), generate(twin, list(range(8)), **kw)
    assert min(seen) >= lo - 1e-6 and max(seen) <= hi + 1e-6
    assert a.nfe_per_sample == {"euler": 4, "heun": 7}[solver] and a.expert_evals == [8 * a.nfe_per_sample]
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-4)
