"""Declared primary hypotheses, Holm-adjusted secondaries and the summary built only from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ddmbench.analysis.stats import holm, t_interval
from ddmbench.config import ReportConfig, parse_config
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.report import tables
from ddmbench.report.summary import contrast_entries, dissociation, judge, primary_verdicts, summary_text


def _entry(estimate: float, p: float, half: float = 0.1) -> dict[str, Any]:
    return {"estimate": estimate, "ci95": [estimate - half, estimate + half], "estimand": "paired difference",
            "p_value": p}


def _contrast() -> dict[str, Any]:
    """top-2 better in KID, less stable; top-1 with a huge FID effect that nobody declared."""
    return {"reference": "full", "contrasts": {
        "top-2": {"fid": _entry(-1.0, 0.2), "kid": _entry(-0.5, 0.01), "convergence_error": _entry(0.1, 0.04),
                  "lipschitz": _entry(0.0, 0.9), "amplification": {"eps_0.1": _entry(2.0, 0.03),
                                                                   "eps_1": _entry(1.0, 0.001)}},
        "top-1": {"fid": _entry(-40.0, 1e-6), "kid": _entry(-0.1, 0.6), "convergence_error": _entry(0.3, 0.011),
                  "lipschitz": _entry(0.2, 0.012), "amplification": {"eps_0.1": _entry(0.5, 0.02),
                                                                     "eps_1": _entry(0.4, 0.5)}}}}


DECLARED = ReportConfig.model_validate({"primary": [{"policy": "top-2", "metrics": ["kid", "amplification@0.1"]}]})


def test_holm_known_answer_and_bounds() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and holm([0.7]) == [0.7] and holm([0.6, 0.6]) == [1.0, 1.0]
    p = np.random.default_rng(0).random(30)
    adj = np.array(holm(p.tolist()))
    assert np.all(adj >= p) and np.all(adj <= np.minimum(1, 30 * p) + 1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_holm_controls_the_familywise_error_under_the_global_null() -> None:
    rng = np.random.default_rng(1)
    trials = 4000
    p = rng.random((trials, 10))
    rejected_any = np.mean([min(holm(row.tolist())) < 0.05 for row in p])
    unadjusted = np.mean(p.min(1) < 0.05)
    assert rejected_any <= 0.05 + 0.01 and unadjusted > 0.35      # 1 - 0.95^10 = 0.40 without adjustment


@pytest.mark.slow
def test_t_interval_known_answer_and_coverage() -> None:
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert (lo, hi) == pytest.approx((2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)), rel=1e-6)
    assert t_interval(np.array([5.0, 5.0, 5.0])) == (5.0, 5.0)
    draws = np.random.default_rng(2).normal(1.0, 2.0, (3000, 3))
    covered = np.mean([lo <= 1.0 <= hi for lo, hi in map(t_interval, draws)])
    assert 0.935 <= covered <= 0.965
    with pytest.raises(ValueError, match="at least 2"):
        t_interval(np.array([1.0]))


def test_judge_primaries_unadjusted_and_secondaries_holm() -> None:
    judged = judge(_contrast(), DECLARED)
    assert len(judged) == len(contrast_entries(_contrast())) == 12
    head = [v for v in judged if v["family"] == "primary"]
    assert [(v["policy"], v["metric"]) for v in head] == [("top-2", "kid"), ("top-2", "amplification@0.1")]
    assert [v["verdict"] for v in head] == ["lower", "higher"] and all(v["p_adjusted"] == v["p_value"] for v in head)
    assert primary_verdicts(_contrast(), DECLARED) == head
    sec = {(v["policy"], v["metric"]): v for v in judged if v["family"] == "secondary"}
    expected = dict(zip(sec, holm([v["p_value"] for v in sec.values()])))
    assert all(v["p_adjusted"] == pytest.approx(expected[k]) for k, v in sec.items())
    # 0.03 would pass alone at 0.05, but not as one of 10 secondaries; 1e-6 does
    assert sec[("top-2", "convergence_error")]["verdict"] == "not separable"
    assert sec[("top-1", "fid")]["verdict"] == "lower" and sec[("top-2", "amplification@1")]["verdict"] == "higher"
    assert dissociation(judged) == {"policy": "top-2", "holds": True, "quality": head[:1], "stability": head[1:]}


def test_summary_judges_only_what_was_declared() -> None:
    text = summary_text(_contrast(), DECLARED)
    assert text.startswith("The dissociation holds on this run, as declared: top-2")
    assert "top-1" not in text            # an undeclared policy is never named, whatever its effect
    assert "Secondary: 2 of 10" in text
    weak = _contrast()
    weak["contrasts"]["top-2"]["kid"]["p_value"] = 0.2
    assert summary_text(weak, DECLARED).startswith("The dissociation does not hold")
    assert dissociation(judge(weak, DECLARED))["holds"] is False
    assert summary_text(_contrast(), ReportConfig()).startswith("The dissociation is not judged: no primary")
    assert "not tested" in summary_text(_contrast(), ReportConfig.model_validate(
        {"primary": [{"policy": "top-2", "metrics": ["kid"]}]}))
    assert "holds no paired contrasts" in summary_text(None, DECLARED)


def test_entries_without_p_values_are_refused_not_invented() -> None:
    old = {"reference": "full", "contrasts": {"top-2": {
        "fid": {"delta": 1.0, "delta_ci95": [0.5, 1.5], "verdict": "higher"},
        "kid": _entry(0.1, 0.2), "amplification": {"eps_0.1": _entry(1.0, 0.01)}}}}
    with pytest.raises(ArtifactError, match=r"top-2 − full in fid has no estimate, ci95, estimand, p_value"):
        judge(old, DECLARED)
    assert "not judged" in summary_text(old, DECLARED) and "p_value" in summary_text(old, DECLARED)
    missing = {"reference": "full", "contrasts": {"top-2": {"fid": _entry(1.0, 0.5)}}}
    with pytest.raises(ArtifactError, match="no top-2 − full in kid, a primary hypothesis"):
        judge(missing, DECLARED)


def test_verdict_table_lists_primaries_first_with_holm_p() -> None:
    headers, rows = tables.verdicts(judge(_contrast(), DECLARED))
    assert headers[0] == "policy − full" and len(rows) == 12
    assert rows[0][:3] == ["top-2", "kid", "primary"] and rows[0][6] == "(declared)" and rows[0][7] == "lower"
    assert all(r[2] == "secondary" for r in rows[2:])


def test_declared_hypotheses_are_validated() -> None:
    base: dict[str, Any] = {"policies": ["full", "top-1", "top-2"], "analysis": {"eps": [0.1, 1.0]}}
    ok = parse_config({**base, "report": {"primary": [{"policy": "top-2", "metrics": ["kid", "amplification@1"]}]}})
    assert ok.report.primary[0].versus == "full" and ok.report.alpha == 0.05
    cases = [({"primary": [{"policy": "top-3", "metrics": ["kid"]}]}, "policy 'top-3' must be one of policies"),
             ({"primary": [{"policy": "full", "metrics": ["kid"]}]}, "policy 'full' must be one of policies"),
             ({"primary": [{"policy": "top-2", "metrics": ["amplification@0.01"]}]},
              "unknown metric(s) ['amplification@0.01'] for top-2; choose from fid, kid"),
             ({"primary": [{"policy": "top-2", "metrics": []}]}, "report.primary.0.metrics"),
             ({"primary": [{"policy": "top-2", "versus": "top-1", "metrics": ["kid"]}]}, "versus"),
             ({"alpha": 0.0}, "report.alpha")]
    for report, message in cases:
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "report": report})
        assert message in str(err.value) and "\n" not in str(err.value)
