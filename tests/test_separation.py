"""`separation` as a planning tool: Bonferroni-corrected looks, fractions that separate, a size named only
when every larger size agrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmbench.evaluation.metrics import FrechetToReal
from ddmbench.tools.separation import (
    _per_seed_ladder,
    _quality_ladder,
    look,
    named_size,
    resamples_for,
    study,
)


def _rows(*verdicts: str) -> list[dict]:
    return [{"n": 16 * 2 ** i, "verdict": v} for i, v in enumerate(verdicts)]


def test_a_size_is_named_only_when_every_larger_size_agrees() -> None:
    assert named_size(_rows("higher", "not separable", "higher", "higher")) == 64
    assert named_size(_rows("higher", "higher", "higher")) == 16
    assert named_size(_rows("lower", "higher", "higher")) == 32            # a crossing the other way breaks the run
    assert named_size(_rows("higher", "higher", "not separable")) is None  # crossed at 16 and 32: not named
    assert named_size([]) is None


def test_look_is_a_basic_bootstrap_interval_with_the_separating_fraction() -> None:
    reps = np.random.default_rng(0).normal(1.3, 0.1, 20000)   # replicates biased upwards by 0.3
    r = look(100, 1.0, reps, 0.95)
    assert r["interval"] == pytest.approx([0.504, 0.896], abs=0.01)   # 2θ̂ − quantiles of N(1.3, 0.1)
    assert r["verdict"] == "higher" and r["frac_separating"] == 1.0
    weak = look(100, 0.05, np.random.default_rng(1).normal(0.05, 0.1, 20000), 0.95)
    assert weak["verdict"] == "not separable" and weak["frac_separating"] == pytest.approx(0.69, abs=0.02)
    assert look(10, 0.0, np.zeros(5), 0.95)["frac_separating"] == 0.0


def test_looks_are_bonferroni_corrected() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.0, 1.0, 64)
    est, reps = _per_seed_ladder(d, [16, 32, 64], resamples_for(100, 0.05, 3), seed=0)
    one = study(est[-1:], reps[-1:], [64], 0.05)
    three = study(est, reps, [16, 32, 64], 0.05)
    assert three["looks"] == 3 and three["level"] == pytest.approx(1 - 0.05 / 3) and one["level"] == 0.95
    w1, w3 = np.diff(one["rows"][0]["interval"]), np.diff(three["rows"][-1]["interval"])
    assert w3 > w1                                            # the same data, a wider interval per look
    assert resamples_for(100, 0.05, 3) == 1200 and resamples_for(5000, 0.05, 3) == 5000


def test_under_the_null_a_size_is_rarely_named() -> None:
    """Per-seed differences with mean 0: naming any size happens at most ~alpha of the time with the
    correction; 'the first size whose 95% interval excludes 0' happens far more often."""
    rng = np.random.default_rng(3)
    sizes, named, first_crossing = [16, 32, 64], 0, 0
    trials = 300
    for t in range(trials):
        d = rng.standard_normal(64)
        est, reps = _per_seed_ladder(d, sizes, resamples_for(100, 0.05, 3), seed=t)
        named += study(est, reps, sizes, 0.05)["named_size"] is not None
        first_crossing += any(look(n, e, r, 0.95)["verdict"] != "not separable" for n, e, r in zip(sizes, est, reps))
    assert named / trials <= 0.06 and first_crossing / trials > 0.08


def test_quality_ladder_scores_both_policies_on_the_same_rows() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 6, generator=g, dtype=torch.float64)
    b = torch.randn(200, 6, generator=g, dtype=torch.float64)
    a = b + 0.8                                               # a: shifted in mean, b: like the real set
    out = _quality_ladder(real, a, b, [50, 200], resamples=60, seed=0)
    fid_est, fid_reps = out["fid"]
    frechet = FrechetToReal(real)
    assert fid_est[-1] == pytest.approx(float(frechet(a) - frechet(b)), rel=1e-9)
    assert [len(r) for r in fid_reps] == [60, 60] and all(e > 0 for e in fid_est)
    kid_est, kid_reps = out["kid"]
    assert all(e > 0 for e in kid_est) and kid_reps[0].shape == (60,)
    rows = study(fid_est, fid_reps, [50, 200], 0.05)["rows"]
    assert [r["verdict"] for r in rows] == ["higher", "higher"]
