"""The exact cluster posterior p*(k | x_t): known answers, its limits in t, chunking, and its router form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from ddmbench.analysis.posterior import (
    EmpiricalPosterior,
    PosteriorRouter,
    compare_by_t,
    kl_divergence,
    total_variation,
)
from ddmbench.sampling.field import RoutedField
from ddmbench.sampling.policies import parse_policy


def _toy(n: int = 40, d: int = 5, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 2 - 1, torch.arange(n) % k


def _reference(train: torch.Tensor, labels: torch.Tensor, k: int, x: torch.Tensor, t: float) -> torch.Tensor:
    """The mixture-of-point-masses formula written out with the normal log-density (scipy's logsumexp)."""
    normal = torch.distributions.Normal(((1 - t) * train.double())[None], t)          # (1, N, D)
    log_n = normal.log_prob(x.double()[:, None]).sum(-1).numpy()                      # (B, N)
    per_k = [logsumexp(log_n[:, (labels == j).numpy()], axis=1) for j in range(k)]
    out = torch.from_numpy(np.stack(per_k, 1))                                                    # (B, K)
    return out - torch.tensor(logsumexp(log_n, axis=1))[:, None]


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_equals_the_mixture_of_point_masses_formula(t: float) -> None:
    train, labels = _toy()
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    got = EmpiricalPosterior(train, labels, 3, chunk=7)(x, torch.full((16,), t, dtype=torch.float64))
    torch.testing.assert_close(got.log_p.exp(), _reference(train, labels, 3, x, t).exp(), rtol=0, atol=1e-10)


def test_two_gaussian_clusters_match_the_analytic_posterior() -> None:
    # x_0 ~ N(mu_k, s^2 I) in cluster k => x_t | k ~ N((1-t) mu_k, ((1-t)^2 s^2 + t^2) I); many points make the
    # empirical posterior approach that one
    g = torch.Generator().manual_seed(3)
    d, s, n = 2, 0.3, 20_000
    mu = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    sizes = (n, n // 2)
    train = torch.cat([mu[j] + s * torch.randn(sizes[j], d, generator=g) for j in range(2)])
    labels = torch.cat([torch.full((sizes[j],), j) for j in range(2)])
    post = EmpiricalPosterior(train, labels, 2, chunk=5000)
    for t in (0.5, 0.8, 0.95):
        x = (1 - t) * mu[torch.arange(200) % 2] + 0.6 * torch.randn(200, d, generator=g)
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        logits = torch.stack([math.log(sizes[j]) - ((x - (1 - t) * mu[j]) ** 2).sum(1) / (2 * var) for j in range(2)], 1)
        exact = torch.softmax(logits.double(), 1)
        err = (post(x, torch.full((200,), t)).log_p.exp() - exact).abs().max()
        assert err < 0.03, (t, float(err))


def test_t_to_zero_is_the_nearest_training_images_cluster_with_one_effective_point() -> None:
    train, labels = _toy(n=60, k=4)
    x = torch.rand(32, 5, generator=torch.Generator().manual_seed(2)) * 2 - 1
    res = EmpiricalPosterior(train, labels, 4, chunk=9)(x, torch.zeros(32))
    nearest = labels[torch.cdist(x, train).argmin(1)]
    assert torch.equal(res.log_p.argmax(1), nearest)
    torch.testing.assert_close(res.log_p.exp().max(1).values, torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(res.n_eff, torch.ones(32, dtype=torch.float64))


def test_t_one_is_the_cluster_prior_over_every_training_point() -> None:
    train, labels = _toy(n=50, k=3)
    labels = torch.tensor([0] * 30 + [1] * 15 + [2] * 5)
    x = torch.randn(8, 5)
    res = EmpiricalPosterior(train, labels, 3, chunk=11)(x, torch.ones(8))
    prior = torch.tensor([30, 15, 5], dtype=torch.float64) / 50
    torch.testing.assert_close(res.log_p.exp(), prior.expand(8, 3))
    torch.testing.assert_close(res.n_eff, torch.full((8,), 50.0, dtype=torch.float64))


def test_chunked_equals_unchunked_and_rows_are_independent_of_the_batch() -> None:
    train, labels = _toy(n=97, k=4)
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(4))
    t = torch.linspace(0.02, 0.98, 10)
    whole = EmpiricalPosterior(train, labels, 4, chunk=10_000)(x, t)
    for chunk in (1, 13, 96):
        part = EmpiricalPosterior(train, labels, 4, chunk=chunk)(x, t)
        torch.testing.assert_close(part.log_p.exp(), whole.log_p.exp(), rtol=0, atol=1e-12)
        torch.testing.assert_close(part.n_eff, whole.n_eff, rtol=1e-12, atol=0)
    one = EmpiricalPosterior(train, labels, 4)(x[3:4], t[3:4])
    torch.testing.assert_close(one.log_p[0].exp(), whole.log_p[3].exp(), rtol=0, atol=1e-12)


def test_effective_count_grows_with_t() -> None:
    train, labels = _toy(n=200, d=8, k=2)
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(5)) * 0.5
    post = EmpiricalPosterior(train, labels, 2)
    counts = [float(post(x, torch.full((20,), t)).n_eff.mean()) for t in (0.01, 0.5, 0.9, 1.0)]
    assert counts == sorted(counts) and counts[0] == pytest.approx(1.0) and counts[-1] == pytest.approx(200.0)


def test_subset_and_halves_are_fixed_and_disjoint() -> None:
    train, labels = _toy(n=41)
    post = EmpiricalPosterior(train, labels, 3)
    assert post.subset(0, seed=1) is post and post.subset(41, seed=1) is post
    assert torch.equal(post.subset(10, seed=1).train, post.subset(10, seed=1).train) and len(post.subset(10, 1)) == 10
    a, b = post.halves(seed=2)
    rows = {tuple(r.tolist()) for r in torch.cat([a.train, b.train])}
    assert len(a) + len(b) == 41 and len(rows) == 41


def test_split_halves_agree_at_high_t_and_disagree_at_low_t() -> None:
    # cluster = a random label, so at small t each half's nearest image decides and the halves disagree often
    g = torch.Generator().manual_seed(6)
    train = torch.randn(400, 6, generator=g)
    labels = torch.randint(0, 2, (400,), generator=g)
    a, b = EmpiricalPosterior(train, labels, 2).halves(seed=0)
    x = torch.randn(300, 6, generator=g)
    t = torch.tensor([0.05, 0.99]).repeat_interleave(150)
    rows = compare_by_t(a(x, t).log_p, b(x, t).log_p, t)
    low, high = rows
    assert low["t"] == pytest.approx(0.05) and low["tv"] > 0.3 and low["argmax_agreement"] < 0.8
    assert high["tv"] < 0.1 and low["n"] == high["n"] == 150


def test_divergences_known_answers() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]).log()
    q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]).log()
    torch.testing.assert_close(total_variation(p, q), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(kl_divergence(p, q), torch.tensor([math.log(2), math.log(2)], dtype=torch.float64))
    assert float(kl_divergence(p, p).abs().max()) == 0.0


def test_bad_inputs_name_the_problem() -> None:
    train, labels = _toy()
    with pytest.raises(ValueError, match="one cluster label per training image"):
        EmpiricalPosterior(train, labels[:-1], 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        EmpiricalPosterior(train, labels, 2)
    with pytest.raises(ValueError, match="chunk"):
        EmpiricalPosterior(train, labels, 3, chunk=0)


class _Const:
    """A toy expert with constant velocity c."""

    def __init__(self, c: float) -> None:
        self.c = c

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.c)


def test_posterior_router_routes_a_field_by_p_star() -> None:
    g = torch.Generator().manual_seed(7)
    train = torch.rand(30, 1, 2, 2, generator=g) * 2 - 1
    labels = torch.arange(30) % 2
    post = EmpiricalPosterior(train, labels, 2, chunk=8)
    router = PosteriorRouter(post, (1, 2, 2))
    field = RoutedField([_Const(0.0), _Const(1.0)], router, parse_policy("posterior"))
    x, t = torch.randn(6, 1, 2, 2, generator=g), torch.full((6,), 0.6)
    routing = field.route(x, t)
    v = routing.v
    p_star = post(x, t).log_p.exp()
    torch.testing.assert_close(routing.w.double(), p_star, rtol=0, atol=1e-6)
    torch.testing.assert_close(v.flatten(1).mean(1).double(), p_star[:, 1], rtol=0, atol=1e-6)  # sum_k p*_k c_k
    assert router.evals == 6 and router.distance_evals == 6 * 30
    top1 = RoutedField([_Const(0.0), _Const(1.0)], router, parse_policy("posterior-top-1"))
    assert torch.equal(top1(x, t).flatten(1)[:, 0], p_star.argmax(1).float())
