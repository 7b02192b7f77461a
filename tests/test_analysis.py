"""Trajectory analyses on analytic fields with known answers (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddmbench import streams
from ddmbench.analysis import alignment as align
from ddmbench.analysis.convergence import convergence, empirical_order, ladder
from ddmbench.analysis.disagreement import quality_relation, weighted_spread, within_class_quantiles
from ddmbench.analysis.posterior import EmpiricalPosterior
from ddmbench.analysis.stability import RoutingJump, amplification, lipschitz_along, local_lipschitz, unit_directions
from ddmbench.analysis.stats import bootstrap_ci, spearman, summary
from ddmbench.config import AnalysisConfig, SampleConfig
from ddmbench.data.shapes import MNIST_SHAPE as IMAGE_SHAPE
from ddmbench.sampling.field import ModelField, RoutedField, SampleContext
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


def test_routing_jump_of_a_linear_field_is_its_gain_and_leaves_the_trajectory_alone() -> None:
    field = linear(0.7)
    jump = RoutingJump(field, delta=1e-2)
    out = generate(field, SEEDS, nfe_steps=5, solver="heun", batch_size=6, observers=[jump])
    plain = generate(linear(0.7), SEEDS, nfe_steps=5, solver="heun", batch_size=6)
    assert torch.equal(out.images, plain.images) and out.expert_evals == plain.expert_evals  # probes are not cost
    t, ratios, switched = jump.result()
    assert ratios.shape == (len(SEEDS), 10) and len(t) == 10  # Heun: two evaluations per step
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.7), rtol=1e-3, atol=1e-4)
    assert not switched.any()


@pytest.mark.parametrize("label", ["sample-1", "top-1", "full"])
def test_routing_jump_replays_routing_draws(label: str) -> None:
    """The perturbed evaluation sees the same routing draws and changes nothing of the run it observes."""
    def make() -> RoutedField:
        return RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy(label))
    plain = generate(make(), SEEDS, nfe_steps=6, solver="euler", batch_size=7)
    field = make()
    jump = RoutingJump(field, 1e-2)
    probed = generate(field, SEEDS, nfe_steps=6, solver="euler", batch_size=7, observers=[jump])
    assert torch.equal(plain.images, probed.images)
    assert torch.equal(plain.disagreement, probed.disagreement)
    assert plain.expert_evals == probed.expert_evals


def test_routing_jump_sees_top_1_switches_as_large_ratios() -> None:
    """On the decision boundary of top-1 between two point experts a small step flips the expert for about
    half the directions: the ratio is then the velocity gap / delta, far above the smooth part (full)."""
    b, t = 64, torch.full((64,), 0.5)
    e = (MEANS[1] - MEANS[0]) / (MEANS[1] - MEANS[0]).norm()
    x = (0.5 * (1 - t[0]) * (MEANS[0] + MEANS[1]) + 1e-7 * e).expand(b, *IMAGE_SHAPE).clone()  # just on m1's side
    ctx = SampleContext.of(range(b))
    out = {}
    for label in ("top-1", "full"):
        field = RoutedField([PointExpert(m) for m in MEANS], PosteriorRouter(MEANS), parse_policy(label))
        jump = RoutingJump(field, delta=1e-3)
        jump.start(b)
        jump(field.route(x, t, ctx))
        _, ratios, switched = jump.result()
        out[label] = (ratios[:, 0], switched[:, 0])
    (top, flipped), (smooth, never) = out["top-1"], out["full"]
    assert 0.2 < float(flipped.double().mean()) < 0.8 and not never.any()
    gap = float((MEANS[1] - MEANS[0]).norm()) / float(t[0])   # |v_1 - v_0| = |m_1 - m_0| / t
    torch.testing.assert_close(top[flipped], torch.full_like(top[flipped], gap / 1e-3), rtol=1e-2, atol=0)
    assert float(top[~flipped].max()) < 10 and float(smooth.max()) < 0.05 * gap / 1e-3  # full: steep, not a jump


# ----------------------------------------------------------------------------------------------
# convergence
# ----------------------------------------------------------------------------------------------

def test_ladder_and_order_helpers() -> None:
    assert ladder(20, 3) == [5, 10, 20] and ladder(2, 3) == [1, 2]
    assert empirical_order([10, 20, 40], [0.4, 0.2, 0.1]) == pytest.approx(1.0)
    assert empirical_order([10], [0.1]) is None


@pytest.mark.parametrize("solver, order, tol", [("euler", 1.0, 0.1), ("heun", 2.0, 0.15)])
def test_convergence_order_on_a_linear_ode_under_the_shipped_rule(solver: str, order: float, tol: float) -> None:
    """dx/dt = (1 + t) x through the real sampler, with the shipped step count, ladder and reference factor."""
    nfe, factor, rungs = SampleConfig().nfe_steps, AnalysisConfig().reference_factor, AnalysisConfig().ladder_rungs
    field = ModelField(lambda x, t: (1.0 + t.view(-1, 1, 1, 1)) * x.double(), image_shape=(1, 4, 4))
    res = convergence(field, SEEDS[:4], nfe_steps=nfe, solver=solver, reference_factor=factor, rungs=rungs,
                      batch_size=4)
    assert res["steps"] == ladder(nfe, rungs) and res["reference_steps"] == factor * nfe
    assert res["order"] == pytest.approx(order, abs=tol)
    assert res["rms_error"] == sorted(res["rms_error"], reverse=True)
    assert res["error_at_nfe"].shape == (4,)


def test_a_4x_reference_biases_euler_order_upwards() -> None:
    """Why the reference is 16x: at 4x its own error makes exact Euler read order ~1.16 on the 3-rung ladder."""
    field = ModelField(lambda x, t: (1.0 + t.view(-1, 1, 1, 1)) * x.double(), image_shape=(1, 4, 4))
    res = convergence(field, SEEDS[:4], nfe_steps=20, solver="euler", reference_factor=4, rungs=3, batch_size=4)
    assert res["order"] > 1.12


class LinearExpert:
    """v = a x (any image shape)."""

    def __init__(self, a: float) -> None:
        self.a = a

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a * x


class FlatRouter:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3)


def _sample_k_order(clock: int, nfe: int) -> float:
    field = RoutedField([LinearExpert(-1.0), LinearExpert(0.5), LinearExpert(2.0)], FlatRouter(),
                        parse_policy("sample-1"), chunk_rows=0, image_shape=(1, 2, 2), clock=clock)
    return convergence(field, list(range(64)), nfe_steps=nfe, solver="euler", reference_factor=16, rungs=3,
                       batch_size=64)["order"]


@pytest.mark.slow
def test_sample_k_order_is_measured_like_any_field_once_steps_resolve_the_clock() -> None:
    """Time-keyed draws make sample-k one ODE (piecewise constant in t over the clock's cells): with steps
    finer than the cells Euler converges to it at order 1. Draws renewed at every evaluation (a clock far finer
    than any grid) make every step count integrate a different field, and the order falls well below 1."""
    assert _sample_k_order(clock=8, nfe=128) == pytest.approx(1.0, abs=0.1)
    assert _sample_k_order(clock=10**7, nfe=128) < 0.85


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
    rec = TraceRecorder(field, probe_n=len(seeds))
    generate(field, seeds, nfe_steps=8, solver="euler", batch_size=16, observers=[rec])
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
    classes = np.arange(n) % 2
    rel = quality_relation(d, confidence, nn_distance, classes, quantiles=4)
    assert rel["spearman_confidence"]["rho"] < -0.95 and rel["spearman_nn_distance"]["rho"] > 0.95
    assert rel["spearman_confidence_within_class"] < -0.95 and rel["spearman_nn_distance_within_class"] > 0.95
    q = rel["by_quantile"]
    assert [g["n"] for g in q] == [50] * 4 and rel["n_unstratified"] == 0
    assert [g["disagreement_mean"] for g in q] == sorted(g["disagreement_mean"] for g in q)
    assert q[0]["confidence"] > q[-1]["confidence"] and q[0]["nn_distance"] < q[-1]["nn_distance"]


def test_quality_relation_stratified_by_class_removes_a_class_confound() -> None:
    """Class 1 disagrees more and is less confident, but within each class disagreement says nothing about
    quality: pooled quantiles and rho show a strong relation, the within-class ones none."""
    rng = np.random.default_rng(3)
    n = 4000
    classes = rng.integers(0, 2, n)
    d = rng.random(n) + 2.0 * classes                           # class 1: more disagreement
    confidence = 0.9 - 0.4 * classes + 0.05 * rng.standard_normal(n)
    nn_distance = 1.0 + classes + 0.1 * rng.standard_normal(n)
    rel = quality_relation(d, confidence, nn_distance, classes, quantiles=5)
    assert rel["spearman_confidence"]["rho"] < -0.6              # pooled: confounded by class
    assert abs(rel["spearman_confidence_within_class"]) < 0.05 and abs(rel["spearman_nn_distance_within_class"]) < 0.05
    q = rel["by_quantile"]
    assert len(q) == 5 and sum(g["n"] for g in q) == n
    assert abs(q[0]["confidence"] - q[-1]["confidence"]) < 0.02  # pooled quintiles would differ by ~0.4
    bins = within_class_quantiles(d, classes, 5)
    for k in range(5):                                           # every quantile has the whole set's class mix
        assert np.mean(classes[bins == k]) == pytest.approx(np.mean(classes), abs=0.01)


def test_quality_relation_leaves_out_classes_too_small_to_split() -> None:
    d = np.arange(23, dtype=float)
    classes = np.array([0] * 10 + [1] * 10 + [2] * 3)
    rel = quality_relation(d, -d, d, classes, quantiles=5)
    assert rel["n_unstratified"] == 3 and [g["n"] for g in rel["by_quantile"]] == [4] * 5
    assert within_class_quantiles(d, classes, 5)[-3:].tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="differ in length"):
        quality_relation(d, d, d, classes[:5])


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
    rel = quality_relation(np.zeros(20), np.random.default_rng(0).random(20), np.random.default_rng(1).random(20),
                           np.arange(20) % 2)
    assert rel["by_quantile"] == [] and rel["spearman_confidence"]["rho"] is None
    assert rel["spearman_confidence_within_class"] is None


def test_spearman_is_undefined_for_a_constant_side() -> None:
    assert spearman(np.zeros(10), np.arange(10))["rho"] is None
    assert spearman(np.arange(10), np.arange(10))["rho"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# local Lipschitz constant: top singular value of the Jacobian
# ----------------------------------------------------------------------------------------------

LIP_SHAPE = (1, 4, 4)


def _matrix(seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class MatrixExpert:
    """v = A x on (1, 4, 4) states: its Jacobian is A everywhere."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.a.T).view_as(x)


def _states(b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, *LIP_SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64), \
        torch.full((b,), 0.4, dtype=torch.float64)


class AttentionExpert:
    """v = softmax(x x^T) x over the rows of the state, through torch's fused kernel, in float32 (as a diffusers
    model calls it): the power iteration's second derivative must not reach a fused kernel that has none."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows = x.float().flatten(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(rows, rows, rows).view_as(x).to(x.dtype)


def test_lipschitz_goes_through_fused_attention() -> None:
    x, t = _states()
    est = local_lipschitz(ModelField(AttentionExpert(), image_shape=LIP_SHAPE), x.float(), t.float(),
                          torch.ones(len(x), 1), torch.arange(len(x)), iterations=5)
    assert bool(torch.isfinite(est).all()) and bool((est > 0).all())


def test_lipschitz_of_a_linear_field_is_its_spectral_norm() -> None:
    a = _matrix(0)
    sigma = float(torch.linalg.matrix_norm(a, 2))
    field = ModelField(MatrixExpert(a), image_shape=LIP_SHAPE)
    x, t = _states()
    w = torch.ones(len(x), 1)
    est = local_lipschitz(field, x, t, w, torch.arange(len(x)), iterations=60)
    torch.testing.assert_close(est, torch.full_like(est, sigma), rtol=1e-4, atol=0)
    # a few iterations give a lower bound that rises with the iterations; never above the norm
    few = [local_lipschitz(field, x, t, w, torch.arange(len(x)), iterations=k) for k in (1, 3, 10)]
    assert all(bool((f <= sigma * (1 + 1e-9)).all()) for f in few)
    assert bool((few[0] <= few[1] + 1e-9).all()) and bool((few[1] <= few[2] + 1e-9).all())
    # the old single-direction finite difference estimates the RMS singular value: well below the norm
    u = torch.randn(len(x), 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rms = (u @ a.T).norm(dim=1) / u.norm(dim=1)
    assert float(rms.mean()) < 0.8 * sigma
    with pytest.raises(ValueError, match="at least one iteration"):
        local_lipschitz(field, x, t, w, torch.arange(len(x)), iterations=0)


@pytest.mark.parametrize("label", ["full", "top-1", "sample-1", "uniform"])
def test_lipschitz_of_a_routed_field_holds_the_states_routing(label: str) -> None:
    """Linear toy experts A_j through the routed field: the Jacobian with routing held is sum_j w_j A_j."""
    mats = [_matrix(1), _matrix(2, 0.5), _matrix(3, 2.0)]
    field = RoutedField([MatrixExpert(m) for m in mats], lambda x, t: x.flatten(1)[:, :3].float() * 5,
                        parse_policy(label), image_shape=LIP_SHAPE)
    x, t = _states()
    r = field.route(x, t, SampleContext.of(range(len(x))))
    est = local_lipschitz(field, x, t, r.w, torch.arange(len(x)), iterations=80)
    exact = torch.stack([torch.linalg.matrix_norm(sum(float(r.w[i, j]) * mats[j] for j in range(3)), 2)
                         for i in range(len(x))])
    torch.testing.assert_close(est, exact, rtol=1e-3, atol=0)


class ConvExpert(torch.nn.Module):
    """A small nonlinear velocity net in float64 (convolution, group norm, SiLU, time scaling), for the
    Lipschitz power iteration's known answers on more than a linear map."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():                   # seeded weights, the global stream left as it was
            torch.manual_seed(seed)
            self.conv1 = torch.nn.Conv2d(LIP_SHAPE[0], 4, 3, padding=1)
            self.norm = torch.nn.GroupNorm(2, 4)
            self.conv2 = torch.nn.Conv2d(4, LIP_SHAPE[0], 3, padding=1)
        self.double().requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.norm(self.conv1(x)))
        return self.conv2(h) * (1 + t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("label", ["full", "top-1"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_lipschitz_power_iteration_of_a_nonlinear_field_matches_its_exact_jacobian(label: str, iterations: int) -> None:
    """Each iteration's J u and J^T (J u) (reverse over reverse) against the Jacobian built row by row with
    torch.func.jacrev: from the same keyed start vector, k iterations of u <- J^T J u / ||J^T J u|| on the exact
    matrix give the same estimate to float64 rounding, through group norm and SiLU, routing held."""
    field = RoutedField([ConvExpert(1), ConvExpert(2)], lambda x, t: x.flatten(1)[:, :2].float() * 5,
                        parse_policy(label), image_shape=LIP_SHAPE)
    x, t = _states(5)
    seeds = torch.arange(10, 15)
    w = field.route(x, t, SampleContext.of(range(len(x)))).w
    est = local_lipschitz(field, x, t, w, seeds, iterations=iterations)
    u = streams.unit_keyed_directions(streams.POWER_START, seeds, t, LIP_SHAPE).to(x).flatten(1)
    for i in range(len(x)):
        jac = torch.func.jacrev(lambda y: field.combine(y[None], t[i:i + 1], w[i:i + 1])[0])(x[i])
        jac = jac.reshape(u.shape[1], u.shape[1])                                             # (D, D)
        ui = u[i]
        for _ in range(iterations):
            g = jac.T @ (jac @ ui)
            ui = g / g.norm()
        torch.testing.assert_close(est[i], g.norm().sqrt(), rtol=1e-10, atol=0)
        assert float(est[i]) <= float(torch.linalg.matrix_norm(jac, 2)) * (1 + 1e-9)


def test_lipschitz_of_a_field_that_ignores_the_state_is_zero() -> None:
    field = ModelField(lambda x, t: torch.ones_like(x) * t.view(-1, 1, 1, 1), image_shape=LIP_SHAPE)
    x, t = _states(3)
    est = local_lipschitz(field, x, t, torch.ones(3, 1), torch.arange(3), iterations=2)
    assert est.shape == (3,) and bool((est == 0).all())


def test_lipschitz_along_trajectories_follows_the_grid_states() -> None:
    a = _matrix(4)
    field = ModelField(MatrixExpert(a), image_shape=LIP_SHAPE)
    states = torch.randn(3, 5, *LIP_SHAPE, dtype=torch.float64)
    out = lipschitz_along(field, states, torch.linspace(1, 0.2, 5), torch.ones(3, 5, 1), torch.arange(3),
                          iterations=60, batch_size=4)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, torch.full_like(out, float(torch.linalg.matrix_norm(a, 2))), rtol=1e-4, atol=0)
