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


def test_differences_at_float_noise_are_ties_not_signs() -> None:
    """A policy that equals the reference on half the seeds (nucleus or threshold with K = 2): ±1e-7 on those
    seeds, as another float path gives, moves neither frac_lower, nor the Wilcoxon p, nor the median; without the
    tie rule it did (the noise's signs were counted)."""
    rng = np.random.default_rng(3)
    ref = rng.lognormal(size=24) + 5.0
    policy = ref.copy()
    policy[12:] += rng.normal(0.3, 0.5, size=12)                 # differs on half the seeds, equals on the rest
    clean = paired_mean_delta(policy, ref)
    for trial in range(20):
        noisy = policy.copy()
        noisy[:12] += rng.choice([-1e-7, 1e-7], size=12)
        r = paired_mean_delta(noisy, ref)
        assert (r["frac_lower"], r["wilcoxon_p"], r["median_delta"]) == \
               (clean["frac_lower"], clean["wilcoxon_p"], clean["median_delta"]), trial
        assert r["estimate"] == pytest.approx(clean["estimate"], abs=1e-7)
    d = noisy - ref
    assert (d[:12] < 0).any() and (d[:12] > 0).any()              # the noise itself has both signs
    assert clean["frac_lower"] == float((d[12:] < 0).sum()) / 24
    # a real difference just above the drift allowance still counts
    above = ref * (1 - 3e-3)
    assert paired_mean_delta(above, ref)["frac_lower"] == 1.0
    assert paired_mean_delta(ref * (1 - 1e-3), ref)["frac_lower"] == 0.0
    assert clean["tie_tolerance"] == pytest.approx(1e-9 + 2e-3 * max(np.abs(policy).mean(), np.abs(ref).mean()))
