"""Fields, solvers and `generate` with toy analytic experts (no training).

The toy experts are affine per-pixel fields, the toy router scores each row by the distance of its mean
pixel to a per-expert anchor; every computation is row-wise, so batch composition cannot leak in.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddmbench.data.shapes import MNIST_SHAPE as IMAGE_SHAPE
from ddmbench.sampling.field import ModelField, RoutedField, SampleContext
from ddmbench.sampling.flow import denoised, interpolate, time_grid, velocity_target
from ddmbench.sampling.observers import Counting
from ddmbench.sampling.policies import RoutingContext, parse_policy
from ddmbench.sampling.sampler import draw_clusters, generate, noise_for
from ddmbench.sampling.solvers import EVALS_PER_STEP, SOLVERS

K = 3
ANCHORS = (-0.3, 0.0, 0.3)


class ToyExpert:
    """v(x, t) = (1 + t) * (x - c): a smooth affine field; counts calls and rows."""

    def __init__(self, c: float) -> None:
        self.c = c
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return (1.0 + t.view(-1, 1, 1, 1)) * (x - self.c)


class ToyRouter:
    """logits_j = -scale * (mean(x) - anchor_j)^2 (B, K)."""

    def __init__(self, scale: float = 50.0) -> None:
        self.scale = scale
        self.anchors = torch.tensor(ANCHORS)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))                                       # (B,)
        return -self.scale * (m[:, None] - self.anchors[None]) ** 2     # (B, K)


class ConstantRouter:
    def __init__(self, logits: list[float]) -> None:
        self.logits = torch.tensor(logits)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1).clone()


def experts() -> list[ToyExpert]:
    return [ToyExpert(c) for c in ANCHORS]


def routed(label: str, router: object | None = None) -> RoutedField:
    return RoutedField(experts(), router if router is not None else ToyRouter(), parse_policy(label))


def state(b: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *IMAGE_SHAPE, generator=g) * 0.5 + 0.4 * torch.randn(b, 1, 1, 1, generator=g)
    return x, torch.full((b,), 0.6)


SEEDS = list(range(100, 112))


def counted(field: RoutedField, x: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None = None
            ) -> tuple[torch.Tensor, Counting]:
    """One evaluation and its cost counters."""
    counting = Counting(field.num_experts)
    r = field.route(x, t, ctx)
    counting(r)
    return r.v, counting


# ----------------------------------------------------------------------------------------------
# RoutedField
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", list(SOLVERS))
def test_one_expert_ddm_equals_that_expert(solver: str) -> None:
    expert = ToyExpert(0.2)
    single = generate(ModelField(expert), SEEDS, nfe_steps=4, solver=solver, batch_size=5)
    ddm_field = RoutedField([ToyExpert(0.2)], ConstantRouter([0.7]), parse_policy("full"))
    ddm = generate(ddm_field, SEEDS, nfe_steps=4, solver=solver, batch_size=5)
    assert torch.equal(ddm.images, single.images)
    assert ddm.expert_evals == single.expert_evals == [len(SEEDS) * 4 * EVALS_PER_STEP[solver]]


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_top_K_samples_equal_full_samples(solver: str) -> None:
    full = generate(routed("full"), SEEDS, nfe_steps=5, solver=solver, batch_size=4)
    top = generate(routed(f"top-{K}"), SEEDS, nfe_steps=5, solver=solver, batch_size=4)
    assert torch.equal(top.images, full.images)
    assert top.expert_evals == full.expert_evals


@pytest.mark.parametrize("label", ["full", "uniform", "top-1", "top-2", "sample-1", "sample-2",
                                   "threshold-0.2", "nucleus-p0.8-T1", "oracle"])
def test_sparse_dispatch_equals_dense_reference(label: str) -> None:
    x, t = state()
    b = x.shape[0]
    cluster = torch.arange(b) % K
    ctx = SampleContext.of(range(b), cluster)
    field = routed(label)
    v, counting = counted(field, x, t, ctx)

    # dense reference: every expert on the full batch, weights from the same policy and draws
    spec = parse_policy(label)
    p = torch.softmax(ToyRouter()(x, t), dim=1) if spec.uses_router else torch.full((b, K), 1.0 / K)
    w = spec.weights(p, RoutingContext(t=t, seed=ctx.seed, cluster=cluster, clock=field.clock))
    dense = sum(w[:, j].view(-1, 1, 1, 1) * expert(x, t) for j, expert in enumerate(experts()))
    torch.testing.assert_close(v, dense, rtol=1e-6, atol=1e-6)

    # each expert ran on exactly the rows that weight it
    assert counting.expert_evals == [int((w[:, j] > 0).sum()) for j in range(K)]
    assert [e.rows for e in field.experts] == counting.expert_evals
    assert counting.router_evals == (b if spec.uses_router else 0)
    before = [e.rows for e in field.experts]
    torch.testing.assert_close(field.combine(x, t, w), dense, rtol=1e-6, atol=1e-6)  # the differentiable path
    # ... which is sparse too: expert j on the rows that weight it (a sparse policy's Jacobian is not K x dense)
    assert [e.rows - b0 for e, b0 in zip(field.experts, before)] == counting.expert_evals


def test_sparse_policy_actually_skips_rows() -> None:
    x, t = state(b=30)
    _, top1 = counted(routed("top-1"), x, t)
    assert sum(top1.expert_evals) == 30           # one expert per row
    assert sum(1 for n in top1.expert_evals if n > 0) >= 2  # and the router spreads rows over experts
    _, full = counted(routed("full"), x, t)
    assert full.expert_evals == [30] * K


def test_never_selected_expert_is_never_called() -> None:
    field = RoutedField(experts(), ConstantRouter([10.0, -10.0, -10.0]), parse_policy("top-1"))
    result = generate(field, SEEDS, nfe_steps=4, solver="heun", batch_size=5)
    calls = [e.calls for e in field.experts]
    assert calls[1] == calls[2] == 0
    assert calls[0] == 3 * 4 * 2  # 3 batches x 4 steps x 2 evaluations (Heun)
    assert result.expert_evals == [len(SEEDS) * 8, 0, 0]
    # control: the same router under `full` calls every expert (the counters do count)
    dense = RoutedField(experts(), ConstantRouter([10.0, -10.0, -10.0]), parse_policy("full"))
    generate(dense, SEEDS, nfe_steps=4, solver="heun", batch_size=5)
    assert all(e.calls == 24 for e in dense.experts)


@pytest.mark.parametrize("label", ["full", "top-2", "sample-1"])
def test_chunked_dispatch_equals_whole_dispatch(label: str) -> None:
    x, t = state(b=40)
    whole, chunked = RoutedField(experts(), ToyRouter(), parse_policy(label), chunk_rows=0), \
        RoutedField(experts(), ToyRouter(), parse_policy(label), chunk_rows=7)
    ctx = SampleContext.of(range(40))
    (v_whole, n_whole), (v_chunked, n_chunked) = counted(whole, x, t, ctx), counted(chunked, x, t, ctx)
    assert torch.equal(v_whole, v_chunked)
    assert n_whole.expert_evals == n_chunked.expert_evals  # chunking is not extra work
    for rows, expert, one_call in zip(n_chunked.expert_evals, chunked.experts, whole.experts):
        assert expert.calls == math.ceil(rows / 7) and one_call.calls == (1 if rows else 0)


def test_chunked_unet_matches_whole_batch() -> None:
    from ddmbench.models.nets import build_velocity_net
    from ddmbench.sampling.field import evaluate_in_chunks

    torch.manual_seed(0)
    net = build_velocity_net("unet-xs").eval()
    x, t = torch.randn(50, *IMAGE_SHAPE), torch.rand(50)
    with torch.no_grad():
        torch.testing.assert_close(evaluate_in_chunks(net, x, t, 16), net(x, t), rtol=1e-4, atol=1e-5)


def test_oracle_generate_uses_only_each_samples_cluster() -> None:
    cluster = torch.tensor([0, 2, 2, 1, 0, 2, 2, 1, 0, 0, 2, 1])
    field = routed("oracle")
    result = generate(field, SEEDS, nfe_steps=3, solver="euler", batch_size=5, cluster=cluster)
    assert result.expert_evals == [int((cluster == j).sum()) * 3 for j in range(K)]
    assert result.router_evals == 0
    # sample i equals the single expert of its cluster sampled alone
    for i in (0, 1, 3):
        alone = generate(ModelField(ToyExpert(ANCHORS[int(cluster[i])])), [SEEDS[i]], nfe_steps=3,
                         solver="euler", batch_size=1)
        assert torch.equal(result.images[i], alone.images[0])


def test_policies_needing_a_router_refuse_none() -> None:
    with pytest.raises(ValueError, match="needs a router"):
        RoutedField(experts(), None, parse_policy("top-1"))
    RoutedField(experts(), None, parse_policy("uniform"))  # fine without


# ----------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------

def _decay_error(solver: str, steps: int) -> float:
    """dx/dt = -x from t = 1 to t = 0 with x(1) = 1: exact x(0) = e."""
    x1 = torch.ones(1, 1, dtype=torch.float64)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x0 = SOLVERS[solver](lambda x, t: -x, x1, ts)
    return abs(float(x0) - math.e)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2)])
def test_convergence_order(solver: str, order: int) -> None:
    for steps in (16, 32):
        ratio = _decay_error(solver, steps) / _decay_error(solver, 2 * steps)
        assert ratio == pytest.approx(2 ** order, rel=0.06), (steps, ratio)


@pytest.mark.parametrize("solver", list(SOLVERS))
class TestEverySolver:
    def test_exact_for_constant_velocity(self, solver: str) -> None:
        x1 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
        c = torch.randn(1, 1, 4, 4, dtype=torch.float64)
        x0 = SOLVERS[solver](lambda x, t: c.expand_as(x), x1, time_grid(7).double())
        torch.testing.assert_close(x0, x1 - c)  # integral of c over t from 1 to 0

    def test_evaluations_and_callback(self, solver: str) -> None:
        calls: list[torch.Tensor] = []
        events: list[dict] = []

        def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            assert t.shape == (x.shape[0],)
            calls.append(t[0].clone())
            return -x

        ts = time_grid(5)
        x = torch.randn(2, *IMAGE_SHAPE)
        out = SOLVERS[solver](field, x, ts, callback=events.append)
        assert len(calls) == 5 * EVALS_PER_STEP[solver]
        assert [e["i"] for e in events] == list(range(5))
        assert all(float(e["t"]) == float(ts[i]) and float(e["t_next"]) == float(ts[i + 1])
                   for i, e in enumerate(events))
        assert torch.equal(events[-1]["x"], out)
        assert float(calls[0]) == 1.0  # starts at the noise end

    def test_stateless(self, solver: str) -> None:
        x = torch.randn(4, *IMAGE_SHAPE)
        field = ModelField(ToyExpert(0.1))
        a = SOLVERS[solver](field, x, time_grid(3))
        b = SOLVERS[solver](field, x, time_grid(3))
        assert torch.equal(a, b)


def test_time_grid_runs_from_noise_to_data() -> None:
    ts = time_grid(4)
    assert ts.shape == (5,) and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    assert (ts[1:] < ts[:-1]).all()


def test_flow_convention_is_consistent() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, *IMAGE_SHAPE, generator=g), torch.randn(4, *IMAGE_SHAPE, generator=g)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    x_t = interpolate(x0, eps, t)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[3], eps[3])
    torch.testing.assert_close(denoised(x_t, velocity_target(x0, eps), t), x0)


def test_exact_velocity_maps_noise_to_data() -> None:
    """With the true conditional velocity of a point mass, Euler lands on the data point from any step count."""
    target = torch.full((1, *IMAGE_SHAPE), 0.25)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (x_t - x0) / t for x_t on the straight path
        return (x - target) / t.view(-1, 1, 1, 1)

    out = SOLVERS["euler"](v, noise_for([3, 4], IMAGE_SHAPE), time_grid(3))
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1))


# ----------------------------------------------------------------------------------------------
# generate: one generator per sample
# ----------------------------------------------------------------------------------------------

def test_noise_row_depends_on_its_seed_only() -> None:
    batch = noise_for([5, 6, 7], IMAGE_SHAPE)
    assert torch.equal(batch[1], noise_for([6], IMAGE_SHAPE)[0])
    assert torch.equal(batch[1], torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(6)))
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("label", ["sample-1", "top-2", "full"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_generate_is_deterministic_and_batch_size_independent(label: str, solver: str) -> None:
    ref = generate(routed(label), SEEDS, nfe_steps=4, solver=solver, batch_size=len(SEEDS)).images
    again = generate(routed(label), SEEDS, nfe_steps=4, solver=solver, batch_size=len(SEEDS)).images
    assert torch.equal(ref, again)
    for batch_size in (1, 5):
        assert torch.equal(generate(routed(label), SEEDS, nfe_steps=4, solver=solver,
                                    batch_size=batch_size).images, ref)
    # sample i does not depend on which other seeds are drawn with it
    sub = generate(routed(label), SEEDS[3:6], nfe_steps=4, solver=solver, batch_size=3).images
    assert torch.equal(sub, ref[3:6])


def test_generate_differs_across_seeds_and_routing_draws() -> None:
    a = generate(routed("sample-1"), SEEDS, nfe_steps=4, solver="euler", batch_size=4).images
    b = generate(routed("sample-1"), [s + 1000 for s in SEEDS], nfe_steps=4, solver="euler", batch_size=4).images
    assert not torch.equal(a, b)


def test_sample_result_cost_fields() -> None:
    field = ModelField(ToyExpert(0.0))
    result = generate(field, SEEDS, nfe_steps=6, solver="heun", batch_size=5)
    assert result.images.shape == (len(SEEDS), *IMAGE_SHAPE)
    assert result.nfe_per_sample == 12
    assert result.expert_evals == [len(SEEDS) * 12]
    assert result.router_evals == 0
    assert result.seconds >= 0


def test_progress_reports_every_sample() -> None:
    seen: list[int] = []
    generate(ModelField(ToyExpert(0.0)), SEEDS, nfe_steps=2, solver="euler", batch_size=5, progress=seen.append)
    assert seen == [5, 5, 2]


def test_draw_clusters_is_per_seed_and_follows_prior() -> None:
    prior = torch.tensor([6.0, 3.0, 1.0], dtype=torch.float64)
    seeds = list(range(3000))
    drawn = draw_clusters(seeds, prior)
    assert drawn.dtype == torch.long and drawn.shape == (3000,)
    assert torch.equal(drawn[10:20], draw_clusters(seeds[10:20], prior))
    freq = torch.bincount(drawn, minlength=3).double() / len(seeds)
    torch.testing.assert_close(freq, prior / prior.sum(), rtol=0, atol=0.03)
