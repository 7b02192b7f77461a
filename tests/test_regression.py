"""`ddmbench compare` / `baseline`: flattening, tolerance rules, pass/fail and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.errors import ArtifactError
from ddmbench.tools import regression


def _metrics(root: Path, fid: float = 40.0, evals: float = 10.0, wall: float = 3.0) -> Path:
    d = root / "metrics"
    (d / "evaluate").mkdir(parents=True, exist_ok=True)
    (d / "sample").mkdir(parents=True, exist_ok=True)
    (d / "evaluate" / "full.json").write_text(json.dumps(
        {"policy": "full", "fid": fid, "kid": 2.0, "cost": {"wall_time_s": wall}}))
    (d / "sample" / "full.json").write_text(json.dumps(
        {"expert_evals_per_image": evals, "nfe_per_sample": 10, "wall_time_s": wall, "expert_evals_by_expert": [1, 2]}))
    return d


def test_flatten_names_file_and_key(tmp_path: Path) -> None:
    flat = regression.flatten_metrics(_metrics(tmp_path))
    assert flat["evaluate/full.json:fid"] == 40.0
    assert flat["evaluate/full.json:cost.wall_time_s"] == 3.0
    assert flat["sample/full.json:expert_evals_by_expert.1"] == 2.0
    assert "evaluate/full.json:policy" not in flat  # strings are not metrics


def test_timings_are_never_gated_and_counts_are_exact() -> None:
    assert regression.tolerance_for("sample/full.json:wall_time_s") is None
    assert regression.tolerance_for("evaluate/top-1.json:cost.images_per_s") is None
    assert regression.tolerance_for("sample/full.json:nfe_per_sample") == (0.0, 0.0)
    assert regression.tolerance_for("evaluate/full.json:fid") is not None


def test_compare_passes_within_and_fails_outside_tolerance(tmp_path: Path) -> None:
    base = regression.make_baseline(regression.flatten_metrics(_metrics(tmp_path / "a")), why="t",
                                    git_commit="x", profile="p")
    assert "sample/full.json:wall_time_s" not in base["metrics"]
    rel = base["metrics"]["evaluate/full.json:fid"]["rel_tol"]
    inside = regression.flatten_metrics(_metrics(tmp_path / "b", fid=40.0 * (1 + 0.9 * rel), wall=99.0))
    assert all(r.passed for r in regression.compare(inside, base))
    outside = regression.flatten_metrics(_metrics(tmp_path / "c", fid=40.0 * (1 + 1.1 * rel)))
    failed = [r.metric for r in regression.compare(outside, base) if not r.passed]
    assert failed == ["evaluate/full.json:fid"]
    missing = {k: v for k, v in inside.items() if not k.endswith(":fid")}
    assert [r.metric for r in regression.compare(missing, base) if not r.passed] == ["evaluate/full.json:fid"]


def test_malformed_baseline_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match="malformed"):
        regression.compare({}, {"metrics": {"a:b": {"value": 1}}})


def test_cli_compare_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path)
    Path("params.yaml").write_text((Path(__file__).resolve().parents[1] / "params" / "ci.yaml").read_text())
    runner = CliRunner()
    made = runner.invoke(app, ["baseline", "--why", "first baseline", "--out", "bl.json"])
    assert made.exit_code == 0, made.output
    assert json.loads(Path("bl.json").read_text())["why"] == "first baseline"
    assert runner.invoke(app, ["compare", "metrics", "bl.json"]).exit_code == 0
    _metrics(tmp_path, evals=11.5)  # sparse dispatch suddenly costs 15% more
    result = runner.invoke(app, ["compare", "metrics", "bl.json", "--failures-only"])
    assert result.exit_code == 1
    assert "expert_evals_per_image" in result.output
    missing = runner.invoke(app, ["compare", "metrics", "nope.json"])
    assert missing.exit_code == 2 and "nope.json" in missing.output


def test_spread_statistics_rules_and_missing_metrics(tmp_path: Path) -> None:
    runs = {f"seed{i}": regression.flatten_metrics(_metrics(tmp_path / f"s{i}", fid=fid, wall=w))
            for i, (fid, w) in enumerate([(40.0, 3.0), (44.0, 5.0), (42.0, 4.0)])}
    runs["seed2"]["evaluate/full.json:amplification"] = 1.5  # a new metric family in one run only
    out = regression.spread(runs)
    fid = out["metrics"]["evaluate/full.json:fid"]
    assert (fid["n"], fid["mean"], fid["min"], fid["max"], fid["range"]) == (3, 42.0, 40.0, 44.0, 4.0)
    assert fid["std"] == pytest.approx(2.0)  # sample std (ddof=1) of 40, 44, 42
    abs_tol, rel_tol = regression.tolerance_for("evaluate/full.json:fid")
    assert fid["gated"] and fid["tolerance"] == pytest.approx(abs_tol + rel_tol * 42.0)
    assert fid["tol_over_range"] == pytest.approx(fid["tolerance"] / 4.0)
    wall = out["metrics"]["evaluate/full.json:cost.wall_time_s"]
    assert not wall["gated"] and wall["tolerance"] is None and wall["rule"] == "*:cost.wall_time_s"
    assert out["missing_in_some_runs"] == ["evaluate/full.json:amplification"]
    with pytest.raises(ArtifactError, match="at least 2 runs"):
        regression.spread({"only": runs["seed0"]})


def test_metric_without_a_rule_is_reported_not_silently_gated(tmp_path: Path) -> None:
    """New families (amplification, convergence, ...) stay ungated until a rule backed by `ddmbench spread` exists."""
    name = "evaluate/full.json:amplification.mean"
    assert regression.rule_for(name) is None
    runs = {"a": {name: 1.0}, "b": {name: 1.2}}
    m = regression.spread(runs)["metrics"][name]
    assert m["rule"] is None and not m["gated"] and m["range"] == pytest.approx(0.2)
    base = regression.make_baseline({name: 1.0}, why="t", git_commit="x", profile="p")
    assert name not in base["metrics"] and regression.ungated({name: 1.0}, base) == [name]


def test_cli_spread_writes_json_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for i, fid in enumerate((40.0, 41.0)):
        _metrics(tmp_path / f"run{i}", fid=fid)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["spread", "run0/metrics", "run1/metrics", "--out", "s.json"])
    assert result.exit_code == 0, result.output
    data = json.loads(Path("s.json").read_text())
    assert data["runs"] == ["run0/metrics", "run1/metrics"]
    assert data["metrics"]["evaluate/full.json:fid"]["range"] == pytest.approx(1.0)
    assert "evaluate/full.json:fid" in result.output and "wrote s.json" in result.output
