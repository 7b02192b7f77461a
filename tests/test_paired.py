"""Paired per-seed contrasts between policies: alignment by seed, paired intervals and p-values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmbench.analysis.paired import align_by_seed, paired_mean_delta
from ddmbench.analysis.stats import bootstrap_ci
from ddmbench.evaluation.intervals import verdict


def test_align_by_seed_matches_rows_of_permuted_and_partial_seed_lists() -> None:
    a, b = torch.tensor([5, 3, 9, 1]), torch.tensor([1, 9, 7, 5])
    ia, ib = align_by_seed(a, b)
    assert a[ia].tolist() == b[ib].tolist() == [1, 5, 9]


def test_identical_policies_differ_by_exactly_zero() -> None:
    x = np.random.default_rng(0).lognormal(size=64)
    r = paired_mean_delta(x, x.copy())
    assert r["estimate"] == 0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0
    assert r["verdict"] == "not separable" and r["frac_lower"] == 0


def test_pairing_separates_what_overlapping_marginal_intervals_cannot() -> None:
    """Per-seed values that vary a lot between seeds but shift by a constant between policies."""
    rng = np.random.default_rng(1)
    base = rng.lognormal(sigma=1.0, size=64)
    a, b = base * 0.9, base                        # policy a is 10% lower on every seed
    lo_a, hi_a = bootstrap_ci(a, resamples=500)
    lo_b, hi_b = bootstrap_ci(b, resamples=500)
    assert hi_a > lo_b                             # the marginal intervals overlap...
    r = paired_mean_delta(a, b)
    assert r["ci95"][1] < 0 and r["verdict"] == "lower"         # ...the paired one excludes 0
    assert r["frac_lower"] == 1.0 and r["p_value"] < 1e-6 and "paired t" in r["p_value_method"] and r["wilcoxon_p"] < 1e-6
    assert r["ci95"][0] <= r["estimate"] <= r["ci95"][1]


def test_no_real_difference_is_not_separable() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=200)
    r = paired_mean_delta(base + rng.normal(scale=0.1, size=200), base + rng.normal(scale=0.1, size=200))
    assert r["ci95"][0] < 0 < r["ci95"][1] and r["verdict"] == "not separable" and r["p_value"] > 0.05


def test_paired_contrast_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        paired_mean_delta(np.ones(1), np.zeros(1))


def test_verdict_reads_the_sign_of_an_interval_that_excludes_zero() -> None:
    assert (verdict((-2.0, -0.1)), verdict((0.1, 2.0)), verdict((-0.1, 0.1))) == ("lower", "higher", "not separable")


def test_separation_ladder_halves_down_or_checks_the_requested_sizes() -> None:
    from ddmbench.errors import ArtifactError
    from ddmbench.tools.separation import ladder

    assert ladder(1000, None, 125) == [125, 250, 500, 1000] and ladder(64, None, 16) == [16, 32, 64]
    assert ladder(10, None, 125) == [10] and ladder(1000, [500, 100, 500], 125) == [100, 500]
    with pytest.raises(ArtifactError, match="outside 2..1000"):
        ladder(1000, [2000], 125)
