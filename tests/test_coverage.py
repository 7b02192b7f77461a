"""Coverage of every quality interval the pipeline reports, measured by simulation.

Gaussian features (d = 64) with known population statistics: the real distribution N(0, S) and two
generators that differ from it and from each other in mean and in covariance scale,
    a: x = mu_a + s_a L z,   b: x = mu_b + s_b L z   (S = L L^T; the same z: paired by seed).
Population values are exact: FID from the closed form, KID (cubic polynomial kernel) from the first three
moments of the Gaussians; the expected plug-in FID at (N, M) by a large Monte Carlo of the plug-in alone.
Each replication draws a new real set (M rows) and new generated rows (N); the intervals are the shipped
code (RealSet.leave_out -> intervals_from / paired_from, as `evaluate` and `contrast` call them), so they
cover the sampling noise of both sets. `python benchmarks/coverage.py` writes the table to reports/coverage.json.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ddmbench.evaluation.fid import fid, frechet, psd_factor
from ddmbench.evaluation.intervals import RealSet, intervals_from, paired_from

D, M, GROUPS, REPS, NOMINAL, FLOOR = 64, 500, 20, 200, 0.95, 0.93


def population() -> dict[str, Any]:
    """The three distributions: real N(0, S), generators a and b (mean shift along one direction, scale)."""
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) / D ** 0.5
    cov = a @ a.T + 0.25 * torch.eye(D, dtype=torch.float64)
    u = torch.randn(D, generator=g, dtype=torch.float64)
    u = u / u.norm()
    return {"L": torch.linalg.cholesky(cov), "cov": cov, "mean_r": torch.zeros(D, dtype=torch.float64),
            "mean_a": 0.6 * u, "scale_a": 1.15, "mean_b": 0.3 * u, "scale_b": 0.9}


def exact_fid(mean_1: torch.Tensor, cov_1: torch.Tensor, mean_2: torch.Tensor, cov_2: torch.Tensor) -> float:
    return float(frechet(mean_1[None], cov_1[None], psd_factor(cov_1)[None], mean_2[None], cov_2[None])[0])


def _third_moment(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """E[x_i x_j x_k] of N(mean, cov): (d, d, d)."""
    return (torch.einsum("i,j,k->ijk", mean, mean, mean) + torch.einsum("i,jk->ijk", mean, cov)
            + torch.einsum("j,ik->ijk", mean, cov) + torch.einsum("k,ij->ijk", mean, cov))


def expected_kernel(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> float:
    """E (x.y/d + 1)^3 for independent x ~ N(m1, c1), y ~ N(m2, c2): 1 + 3E[s] + 3E[s^2] + E[s^3], s = x.y/d."""
    e1 = float(m1 @ m2) / D
    e2 = float(torch.trace((c1 + torch.outer(m1, m1)) @ (c2 + torch.outer(m2, m2)))) / D ** 2
    e3 = float((_third_moment(m1, c1) * _third_moment(m2, c2)).sum()) / D ** 3
    return 1 + 3 * e1 + 3 * e2 + e3


def exact_kid(mean_1: torch.Tensor, cov_1: torch.Tensor, mean_2: torch.Tensor, cov_2: torch.Tensor) -> float:
    return (expected_kernel(mean_1, cov_1, mean_1, cov_1) + expected_kernel(mean_2, cov_2, mean_2, cov_2)
            - 2 * expected_kernel(mean_1, cov_1, mean_2, cov_2))


def targets(pop: dict[str, Any], n: int, mc: int, seed: int) -> dict[str, float]:
    """Population FID and KID of a and b and their differences; the expected plug-in FID of a at (n, M)."""
    cov, mr = pop["cov"], pop["mean_r"]
    out = {}
    for gen in ("a", "b"):
        mean, c = pop[f"mean_{gen}"], pop[f"scale_{gen}"] ** 2 * cov
        out[f"fid_inf_{gen}"] = exact_fid(mr, cov, mean, c)
        out[f"kid_{gen}"] = exact_kid(mr, cov, mean, c)
    g = torch.Generator().manual_seed(seed)
    out["fid_at_n_a"] = sum(fid(*draw(pop, n, g)[:2]) for _ in range(mc)) / mc
    return out


def draw(pop: dict[str, Any], n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One replication: real (M, D), generated a and b (n, D), row-aligned; float32 like extracted features."""
    real = torch.randn(M, D, generator=g, dtype=torch.float64) @ pop["L"].T
    z = torch.randn(n, D, generator=g, dtype=torch.float64) @ pop["L"].T
    return real.float(), (pop["mean_a"] + pop["scale_a"] * z).float(), (pop["mean_b"] + pop["scale_b"] * z).float()


def _covers(interval: list[float], value: float) -> bool:
    return interval[0] <= value <= interval[1]


def simulate(n: int, reps: int = REPS, seed: int = 0, mc: int = 500) -> dict[str, Any]:
    """Coverage of each interval over ``reps`` replications at N = n generated rows."""
    pop = population()
    t = targets(pop, n, mc, seed + 10_000)
    g = torch.Generator().manual_seed(seed)
    hits: dict[str, int] = {}
    widths: dict[str, float] = {}
    for _ in range(reps):
        real, fa, fb = draw(pop, n, g)
        rs = RealSet(real, GROUPS)
        va, vb = rs.leave_out(fa), rs.leave_out(fb)
        qa, qb = intervals_from(*va, n=n, m=M), intervals_from(*vb, n=n, m=M)
        pq = paired_from(va, vb, n=n)
        checks = {"fid_at_n": (qa["fid_ci95"], t["fid_at_n_a"]),
                  "fid_inf": (qa["fid_inf_ci95"], t["fid_inf_a"]), "fid_inf_b": (qb["fid_inf_ci95"], t["fid_inf_b"]),
                  "kid": (qa["kid_ci95"], t["kid_a"]), "kid_b": (qb["kid_ci95"], t["kid_b"]),
                  "paired_fid_inf": (pq["fid"]["ci95"], t["fid_inf_a"] - t["fid_inf_b"]),
                  "paired_kid": (pq["kid"]["ci95"], t["kid_a"] - t["kid_b"])}
        for key, (interval, value) in checks.items():
            hits[key] = hits.get(key, 0) + _covers(interval, value)
            widths[key] = widths.get(key, 0.0) + (interval[1] - interval[0]) / reps
    return {"n": n, "m": M, "d": D, "groups": GROUPS, "reps": reps, "nominal": NOMINAL, "targets": t,
            "coverage": {k: v / reps for k, v in hits.items()}, "mean_width": widths}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small eigensolves and matmuls run fastest on one thread, and other jobs share this machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_exact_kid_matches_a_large_monte_carlo() -> None:
    """The moment formula of the population KID (what the coverage is measured against) is right."""
    from ddmbench.evaluation.kid import kid_unbiased

    pop = population()
    g = torch.Generator().manual_seed(5)
    real = torch.randn(6000, D, generator=g, dtype=torch.float64) @ pop["L"].T
    fake = pop["mean_a"] + pop["scale_a"] * torch.randn(6000, D, generator=g, dtype=torch.float64) @ pop["L"].T
    exact = exact_kid(pop["mean_r"], pop["cov"], pop["mean_a"], pop["scale_a"] ** 2 * pop["cov"])
    assert kid_unbiased(real, fake) == pytest.approx(exact, rel=0.05)  # MC standard error ~1.5% here


@pytest.mark.slow
@pytest.mark.parametrize("n", [300, 1000])
def test_intervals_cover_their_estimands(n: int, one_thread: None) -> None:
    table = simulate(n)
    print(f"\ncoverage at N = {n}, M = {M}, d = {D}, {REPS} replications:", table["coverage"])
    low = {k: v for k, v in table["coverage"].items() if v < FLOOR}
    assert not low, f"coverage below {FLOOR} at N = {n}: {low}"
    assert all(math.isfinite(w) and w > 0 for w in table["mean_width"].values())


@pytest.mark.slow
@pytest.mark.parametrize("n", [24, 64])
def test_per_seed_mean_difference_interval_covers_the_mean(n: int) -> None:
    """contrast's per-seed intervals (amplification, convergence error, Lipschitz) on skewed paired values:
    log-normal per-seed results of two policies from the same seeds, b 20% lower with extra noise. n = the
    analysis.n of the CI (24) and default (64) profiles; 400 replications."""
    from ddmbench.analysis.paired import paired_mean_delta

    sigma, reps = 0.5, 400
    true = math.exp(sigma ** 2 / 2) - 0.8 * math.exp((sigma ** 2 + 0.09) / 2)
    g = torch.Generator().manual_seed(n)
    hits = 0
    for _ in range(reps):
        z, e = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
        a, b = (sigma * z).exp(), 0.8 * (sigma * z + 0.3 * e).exp()
        hits += _covers(paired_mean_delta(a.numpy(), b.numpy())["ci95"], true)
    print(f"\nper-seed mean difference, n = {n}: coverage {hits / reps}")
    assert hits / reps >= FLOOR
