"""`separation` as a planning tool: Bonferroni-corrected looks on the contrast stage's p-values, the fraction
of resamples that separate, a size named only when every larger size agrees."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from ddmbench.errors import ArtifactError
from ddmbench.tools.separation import _renumbered, named_size, study


def _t_differences(d: np.ndarray):
    """A stand-in for the contrast stage: the mean of per-seed differences d[idx] with a t interval and p."""
    def at(idx: torch.Tensor) -> dict[str, dict[str, Any]]:
        x = d[idx.numpy()]
        res = stats.ttest_1samp(x, 0.0) if np.ptp(x) > 0 else None
        ci = res.confidence_interval(0.95) if res else (x[0], x[0])
        return {"m": {"estimate": float(x.mean()), "ci95": [float(ci[0]), float(ci[1])], "estimand": "mean",
                      "p_value": float(res.pvalue) if res else 1.0}}
    return at


def _rows(*verdicts: str) -> list[dict]:
    return [{"n": 16 * 2 ** i, "verdict": v} for i, v in enumerate(verdicts)]


def test_a_size_is_named_only_when_every_larger_size_agrees() -> None:
    assert named_size(_rows("higher", "not separable", "higher", "higher")) == 64
    assert named_size(_rows("higher", "higher", "higher")) == 16
    assert named_size(_rows("lower", "higher", "higher")) == 32            # a crossing the other way breaks the run
    assert named_size(_rows("higher", "higher", "not separable")) is None  # crossed at 16 and 32: not named
    assert named_size([]) is None


def test_looks_are_bonferroni_corrected_on_p_values() -> None:
    d = np.random.default_rng(0).normal(0.2, 1.0, 64)
    one = study(_t_differences(d), [64], 0.05, resamples=0, seed=0)["m"]
    three = study(_t_differences(d), [16, 32, 64], 0.05, resamples=0, seed=0)["m"]
    assert one["alpha_per_look"] == 0.05 and three["alpha_per_look"] == pytest.approx(0.05 / 3)
    p = three["rows"][-1]["p_value"]
    assert p == one["rows"][0]["p_value"] and 0.05 / 3 < p < 0.05   # this seed: separates alone, not as 1 of 3 looks
    assert one["rows"][0]["verdict"] == "higher" and three["rows"][-1]["verdict"] == "not separable"
    assert three["named_size"] is None and three["rows"][0]["frac_separating"] is None


@pytest.mark.slow
def test_the_separating_fraction_is_how_often_a_fresh_run_of_that_size_would_separate() -> None:
    strong = study(_t_differences(np.random.default_rng(1).normal(0.6, 1.0, 64)), [16, 64], 0.05, 200, seed=0)["m"]
    assert [r["verdict"] for r in strong["rows"]] == ["higher", "higher"] and strong["named_size"] == 16
    small, large = (r["frac_separating"] for r in strong["rows"])
    assert 0.5 < small < large and large > 0.97
    null = study(_t_differences(np.random.default_rng(2).normal(0.0, 1.0, 64)), [64], 0.05, 200, seed=0)["m"]
    assert null["rows"][0]["verdict"] == "not separable" and null["rows"][0]["frac_separating"] == 0.0


@pytest.mark.slow
def test_under_the_null_a_size_is_rarely_named() -> None:
    """Per-seed differences with mean 0: naming a size happens at most ~alpha of the time with the correction;
    'the first size whose 95% interval excludes 0' happens far more often."""
    rng = np.random.default_rng(3)
    sizes, named, first_crossing, trials = [16, 32, 64], 0, 0, 400
    for _ in range(trials):
        d = rng.standard_normal(64)
        named += study(_t_differences(d), sizes, 0.05, 0, 0)["m"]["named_size"] is not None
        first_crossing += any(stats.ttest_1samp(d[:n], 0).pvalue < 0.05 for n in sizes)
    assert named / trials <= 0.05 and first_crossing / trials > 0.08


def test_a_difference_without_a_p_value_is_refused() -> None:
    def old(idx: torch.Tensor) -> dict[str, dict[str, Any]]:
        return {"fid": {"delta": 1.0, "delta_ci95": [0.5, 1.5], "verdict": "higher"}}
    with pytest.raises(ArtifactError, match="fid difference has no estimate, ci95, p_value; .* never invents one"):
        study(old, [16], 0.05, 10, 0)


def test_resampled_rows_keep_their_pairs_under_fresh_seeds() -> None:
    rows = {"seeds": torch.tensor([5, 9, 11]), "eps": torch.tensor([0.1, 1.0]),
            "amplification": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "lipschitz": torch.tensor([7.0, 8.0, 9.0])}
    out = _renumbered(rows, torch.tensor([2, 2, 0]), ("lipschitz",), ("amplification",))
    assert out["seeds"].tolist() == [0, 1, 2] and out["lipschitz"].tolist() == [9.0, 9.0, 7.0]
    assert out["amplification"].tolist() == [[3.0, 3.0, 1.0], [6.0, 6.0, 4.0]] and torch.equal(out["eps"], rows["eps"])
