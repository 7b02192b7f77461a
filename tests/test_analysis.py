"""Trajectory analyses on analytic fields with known answers (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddmbench.analysis import alignment as align
from ddmbench.analysis.convergence import convergence, empirical_order, ladder
from ddmbench.analysis.disagreement import quality_relation, weighted_spread
from ddmbench.analysis.posterior import EmpiricalPosterior
from ddmbench.analysis.stability import LipschitzProbes, amplification, unit_directions
from ddmbench.analysis.stats import bootstrap_ci, spearman, summary
from ddmbench.data.shapes import MNIST_SHAPE as IMAGE_SHAPE
from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.traces import TraceRecorder

SEEDS = list(range(20, 36))
D = math.prod(IMAGE_SHAPE)


def linear(c: float) -> ModelField:
    """v(x, t) = c x: integrating from t = 1 to 0 multiplies x by exp(-c) (Euler: (1 - c/n)^n)."""
    return ModelField(lambda x, t: c * x)


class PointExpert:
    """The exact velocity of a flow whose data is the single point m: v = (x - m) / t."""

    def __init__(self, m: torch.Tensor) -> None:
        self.m = m

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - self.m) / t.clamp_min(1e-3).view(-1, 1, 1, 1)


class PosteriorRouter:
    """Exact cluster posterior for two equally likely point clusters: logits -||x - (1-t) m_j||^2 / (2 t^2)."""

    def __init__(self, means: torch.Tensor) -> None:
        self.means = means

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.clamp_min(1e-3).view(-1, 1)
        diff = x.flatten(1)[:, None, :] - (1 - tb)[:, :, None] * self.means.flatten(1)[None]
        return -diff.pow(2).sum(-1) / (2 * tb ** 2)


MEANS = torch.stack([torch.full(IMAGE_SHAPE, -0.5), torch.full(IMAGE_SHAPE, 0.5)])


# ----------------------------------------------------------------------------------------------
# amplification and Lipschitz
# ----------------------------------------------------------------------------------------------

def test_unit_directions_have_unit_norm_and_depend_on_seed() -> None:
    u = unit_directions([1, 2, 1], IMAGE_SHAPE)
    torch.testing.assert_close(u.flatten(1).norm(dim=1), torch.ones(3, dtype=u.dtype))
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])


@pytest.mark.parametrize("c, steps", [(0.0, 4), (0.7, 4), (0.7, 16), (-0.5, 8)])
def test_amplification_of_a_linear_flow_is_its_gain(c: float, steps: int) -> None:
    amp = amplification(linear(c), SEEDS, [1e-2, 1.0], nfe_steps=steps, solver="euler", batch_size=5)
    gain = (1 - c / steps) ** steps  # Euler on dx/dt = c x, t from 1 to 0
    for ratios in amp.values():
        torch.testing.assert_close(ratios, torch.full_like(ratios, gain), rtol=1e-4, atol=1e-5)


def test_amplification_of_a_routing_switch_is_the_cluster_gap() -> None:
    """Top-1 between two point experts lands exactly on a point: a perturbation either leaves x0 where it
    was or, when it flips the choice, moves it by the gap between the points (a discontinuity)."""
    field = RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy("top-1"))
    top = amplification(field, list(range(2000)), [1.0], nfe_steps=8, solver="euler", batch_size=500)[1.0]
    gap = float((MEANS[1] - MEANS[0]).norm())
    assert (top > 0).any()
    assert all(v == 0 or v == pytest.approx(gap) for v in top.tolist())


def test_lipschitz_probe_of_a_linear_field_is_its_constant_and_leaves_the_trajectory_alone() -> None:
    probes = LipschitzProbes(delta=1e-2, seed=0)
    out = generate(linear(0.7), SEEDS, nfe_steps=5, solver="heun", batch_size=6, wrap=probes)
    plain = generate(linear(0.7), SEEDS, nfe_steps=5, solver="heun", batch_size=6)
    assert torch.equal(out.images, plain.images)
    t, ratios = probes.result()
    assert ratios.shape == (len(SEEDS), 10) and len(t) == 10  # Heun: two evaluations per step
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.7), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("label", ["sample-1", "top-1", "full"])
def test_lipschitz_probe_replays_routing_draws(label: str) -> None:
    """The perturbed evaluation must not consume the sample's routing draws or its spread record."""
    def make() -> RoutedField:
        return RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy(label))
    plain = generate(make(), SEEDS, nfe_steps=6, solver="euler", batch_size=7)
    probed = generate(make(), SEEDS, nfe_steps=6, solver="euler", batch_size=7, wrap=LipschitzProbes(1e-2, 0))
    assert torch.equal(plain.images, probed.images)
    assert torch.equal(plain.disagreement, probed.disagreement)


# ----------------------------------------------------------------------------------------------
# convergence
# ----------------------------------------------------------------------------------------------

def test_ladder_and_order_helpers() -> None:
    assert ladder(20, 3) == [5, 10, 20] and ladder(2, 3) == [1, 2]
    assert empirical_order([10, 20, 40], [0.4, 0.2, 0.1]) == pytest.approx(1.0)
    assert empirical_order([10], [0.1]) is None


@pytest.mark.parametrize("solver, order", [("euler", 1.0), ("heun", 2.0)])
def test_convergence_order_on_a_linear_ode(solver: str, order: float) -> None:
    field = ModelField(lambda x, t: (1.0 + t.view(-1, 1, 1, 1)) * x)
    res = convergence(field, SEEDS[:4], nfe_steps=32, solver=solver, reference_factor=16, rungs=4, batch_size=4)
    assert res["steps"] == [4, 8, 16, 32] and res["reference_steps"] == 512
    assert res["order"] == pytest.approx(order, abs=0.15)
    assert res["rms_error"] == sorted(res["rms_error"], reverse=True)
    assert res["error_at_nfe"].shape == (4,)


def test_convergence_reuses_given_samples_at_nfe() -> None:
    field = linear(0.5)
    at = generate(field, SEEDS, nfe_steps=8, solver="euler", batch_size=8).images
    a = convergence(field, SEEDS, nfe_steps=8, solver="euler", reference_factor=4, rungs=2, batch_size=8)
    b = convergence(field, SEEDS, nfe_steps=8, solver="euler", reference_factor=4, rungs=2, batch_size=8, at_nfe=at)
    assert a["rms_error"] == b["rms_error"]


# ----------------------------------------------------------------------------------------------
# alignment
# ----------------------------------------------------------------------------------------------

def _traced(label: str, seeds: list[int], router: object | None = None) -> dict[str, torch.Tensor]:
    field = RoutedField([PointExpert(m) for m in MEANS], router or PosteriorRouter(MEANS), parse_policy(label))
    rec = TraceRecorder()
    generate(field, seeds, nfe_steps=8, solver="euler", batch_size=16, recorder=rec, probe_n=len(seeds))
    return rec.result()


def _p_star(trace: dict[str, torch.Tensor]) -> torch.Tensor:
    """p* at every probe state (M, S, K) from the two-point training set MEANS (clusters 0, 1)."""
    post = EmpiricalPosterior(MEANS, torch.tensor([0, 1]), 2)
    m, s = trace["probe_x"].shape[:2]
    return post(trace["probe_x"].flatten(0, 1), trace["t"].repeat(m)).log_p.exp().view(m, s, 2)


def test_posterior_alignment_known_answers() -> None:
    p_star = torch.tensor([[0.7, 0.2, 0.1]] * 4)
    w = torch.tensor([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1.0], [0.7, 0.2, 0.1]])
    al = align.posterior_alignment(w, p_star)
    torch.testing.assert_close(al["posterior_weight"], torch.tensor([0.7, 1 / 3, 0.1, 0.54], dtype=torch.float64))
    assert al["hit"][[0, 2, 3]].tolist() == [1.0, 0.0, 1.0] and math.isnan(al["hit"][1])  # uniform: no top expert


def test_posterior_alignment_of_uniform_weights_is_one_over_k_whatever_p_star() -> None:
    p_star = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), 1)
    al = align.posterior_alignment(torch.full((50, 4), 0.25), p_star)
    torch.testing.assert_close(al["posterior_weight"], torch.full((50,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("label", ["top-1", "full"])
def test_alignment_is_high_with_exact_experts_and_router(label: str) -> None:
    trace = _traced(label, list(range(40)))
    idx = trace["probe_index"]
    p_star = _p_star(trace)
    torch.testing.assert_close(trace["p"][idx, 1:].double(), p_star[:, 1:], rtol=0, atol=1e-4)  # the router is p*
    al = align.posterior_alignment(trace["w"][idx], p_star)
    assert al["hit"].shape == (40, 8)
    # at t = 1 p* is the uniform prior (a tie); from the second evaluation on it decides
    assert float(al["hit"][:, 1:].mean()) == 1.0 and float(al["posterior_weight"][:, 3:].min()) > 0.99


def test_alignment_comes_out_against_a_policy_with_a_wrong_router() -> None:
    # the router names the other cluster: a top-1 policy then selects the expert whose data the state is not near
    # (the circular x̂0 measure scored this 1.0: x̂0 lands on the chosen expert's point)
    wrong = PosteriorRouter(MEANS.flip(0))
    trace = _traced("top-1", list(range(40)), router=wrong)
    al = align.posterior_alignment(trace["w"][trace["probe_index"]], _p_star(trace))
    assert float(al["hit"][:, 1:].mean()) == 0.0 and float(al["posterior_weight"][:, 3:].max()) < 0.01


# ----------------------------------------------------------------------------------------------
# disagreement
# ----------------------------------------------------------------------------------------------

def test_disagreement_is_zero_for_identical_experts() -> None:
    same = RoutedField([PointExpert(MEANS[0])] * 2, PosteriorRouter(MEANS), parse_policy("full"))
    diff = RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy("full"))
    assert float(generate(same, SEEDS, nfe_steps=4, solver="euler", batch_size=5).disagreement.abs().max()) == 0
    assert float(generate(diff, SEEDS, nfe_steps=4, solver="euler", batch_size=5).disagreement.min()) > 0
    v = torch.randn(3, 4, 1, *IMAGE_SHAPE).expand(3, 4, 2, *IMAGE_SHAPE)
    assert float(weighted_spread(v, torch.full((3, 4, 2), 0.5)).abs().max()) == 0


def test_weighted_spread_is_the_weighted_variance() -> None:
    v = torch.stack([torch.zeros(IMAGE_SHAPE), torch.full(IMAGE_SHAPE, 2.0)]).view(1, 1, 2, *IMAGE_SHAPE)
    for a0 in (0.5, 0.25, 1.0):
        a = torch.tensor([[[a0, 1 - a0]]])
        mean = 2 * (1 - a0)
        expected = a0 * mean ** 2 + (1 - a0) * (2 - mean) ** 2
        assert float(weighted_spread(v, a)) == pytest.approx(expected)


def test_one_expert_policy_has_zero_policy_disagreement() -> None:
    top1 = RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy("top-1"))
    assert float(generate(top1, SEEDS, nfe_steps=4, solver="euler", batch_size=5).disagreement.abs().max()) == 0


def test_quality_relation_ranks_and_quantiles() -> None:
    rng = np.random.default_rng(0)
    n = 200
    d = rng.random(n)
    confidence = 1 - d + 0.01 * rng.random(n)                   # falls with disagreement
    nn_distance = d + 0.01 * rng.random(n)                      # rises with it
    real = torch.randn(400, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fake = torch.randn(n, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fake += torch.from_numpy(d)[:, None] * 3                    # more disagreement, further from the real set
    rel = quality_relation(d, confidence, nn_distance, real, fake, quantiles=4)
    assert rel["spearman_confidence"]["rho"] < -0.95 and rel["spearman_nn_distance"]["rho"] > 0.95
    q = rel["by_quantile"]
    assert [g["n"] for g in q] == [50] * 4
    assert [g["disagreement_mean"] for g in q] == sorted(g["disagreement_mean"] for g in q)
    assert q[0]["fid"] < q[-1]["fid"]


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------

def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 800)
    for values in (small, large):
        s = summary(values, resamples=500)
        assert s["mean_ci95"][0] <= s["mean"] <= s["mean_ci95"][1]
        assert s["median_ci95"][0] <= s["median"] <= s["median_ci95"][1]
    width = [np.diff(bootstrap_ci(v, resamples=500)) for v in (small, large)]
    assert width[1] < width[0] / 2
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0)
    assert bootstrap_ci(np.random.default_rng(1).random(30), seed=3) == bootstrap_ci(np.random.default_rng(1).random(30), seed=3)


def test_quality_relation_of_a_constant_disagreement_ranks_nothing() -> None:
    feats = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rel = quality_relation(np.zeros(20), np.random.default_rng(0).random(20), np.random.default_rng(1).random(20),
                           feats, feats)
    assert rel["by_quantile"] == [] and rel["spearman_confidence"]["rho"] is None


def test_spearman_is_undefined_for_a_constant_side() -> None:
    assert spearman(np.zeros(10), np.arange(10))["rho"] is None
    assert spearman(np.arange(10), np.arange(10))["rho"] == pytest.approx(1.0)
