"""`ddmbench compare` / `baseline`: flattening, tolerance rules, pass/fail and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddmbench import regression
from ddmbench.cli import app
from ddmbench.errors import ArtifactError


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
