"""benchmarks/gate_power.py, the mutation suite: every planted fault still applies to the code, applying one
edits exactly its target, the table lands between its markers, and one cheap mutation changes behaviour."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project

from ddmbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gate_power", REPO / "benchmarks" / "gate_power.py")
gate_power = importlib.util.module_from_spec(_spec)
sys.modules["gate_power"] = gate_power
_spec.loader.exec_module(gate_power)


def test_at_least_six_mutations_over_the_layers_each_still_applies_once() -> None:
    mutations = gate_power.MUTATIONS
    assert len(mutations) >= 6 and len({m.name for m in mutations}) == len(mutations)
    assert {"policy", "solver", "training", "router", "evaluator", "analysis"} <= {m.layer for m in mutations}
    for m in mutations:
        assert (REPO / m.path).read_text().count(m.old) == 1, m.name     # the code has not moved under it
        assert m.old != m.new


def test_apply_edits_only_the_target_and_refuses_a_moved_target(tmp_path: Path) -> None:
    m = gate_power.MUTATIONS[0]
    (tmp_path / m.path).parent.mkdir(parents=True)
    original = (REPO / m.path).read_text()
    (tmp_path / m.path).write_text(original)
    gate_power.apply(tmp_path, m)
    mutated = (tmp_path / m.path).read_text()
    assert mutated == original.replace(m.old, m.new) and mutated.count(m.new) == 1
    with pytest.raises(ConfigError, match=f"mutation {m.name}: {m.path} holds its target text 0 times"):
        gate_power.apply(tmp_path, m)                                   # already applied: target gone


@pytest.mark.slow
def test_top_k_mutation_keeps_the_smallest_probabilities(tmp_path: Path) -> None:
    """The harness on one cheap mutation: the mutated copy's top-1 picks the least likely expert."""
    m = next(m for m in gate_power.MUTATIONS if m.name == "top-k-smallest")
    subprocess.run(["cp", "-r", str(REPO / "ddmbench"), str(tmp_path / "ddmbench")], check=True)
    gate_power.apply(tmp_path, m)
    probe = ("import torch; from ddmbench.sampling import policies as P; "
             "p = torch.tensor([[0.1, 0.6, 0.3]]); print(P.top_k(p, None, k=1).tolist())")
    out = {}
    (tmp_path / "cwd").mkdir()                  # python -c puts its cwd first on sys.path: keep it empty
    for label, root in (("original", REPO), ("mutated", tmp_path)):
        proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "cwd", capture_output=True, text=True,
                              env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        out[label] = json.loads(proc.stdout)
    assert out == {"original": [[0.0, 1.0, 0.0]], "mutated": [[1.0, 0.0, 0.0]]}


def _rows() -> list[dict]:
    other = {"verdict": "other-machine", "caught": False, "failing_contrasts": [], "values_beyond_drift": None,
             "largest_move": 0.1}
    return [{"mutation": "none (control)", "layer": "", "what": "HEAD as committed", "verdict": "exact",
             "failing_contrasts": [], "values_beyond_drift": 0, "other_machine": other},
            {"mutation": "top-k-smallest", "layer": "policy", "what": "top-k keeps the smallest", "verdict": "regression",
             "failing_contrasts": ["top-1 − full: fid (sign flipped)"], "values_beyond_drift": 120, "commit": "c0ffee1",
             "other_machine": {**other, "verdict": "regression", "caught": True, "largest_move": 2.5,
                               "failing_contrasts": ["top-1 − full: fid (sign flipped)"],
                               "beyond_spread": ["top-1 − full: fid"], "missed_beyond_spread": []}},
            {"mutation": "ema-disabled", "layer": "training", "what": "no EMA", "verdict": "pipeline failed",
             "failing_contrasts": [], "values_beyond_drift": None,
             "other_machine": {**other, "verdict": "pipeline failed", "largest_move": None}}]


def test_table_goes_between_the_markers_and_is_replaced_on_rerun(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# CI regression baseline\n\nintro\n\n## Power\n\ntext after\n")
    table = gate_power.markdown(_rows(), "Measured at abc.")
    assert ("| `top-k-smallest`: top-k keeps the smallest | policy | c0ffee1 | regression | "
            "top-1 − full: fid (sign flipped) | 120 | regression | top-1 − full: fid (sign flipped) | 2.5 | 0 of 1 |") in table
    assert "| `ema-disabled`: no EMA | training | ? | pipeline failed | none | — | pipeline failed | none | — | 0 of 0 |" in table
    gate_power.write_table(readme, table)
    first = readme.read_text()
    assert first.startswith("# CI regression baseline\n\nintro") and first.count(gate_power.START) == 1
    gate_power.write_table(readme, gate_power.markdown(_rows()[:1], "Measured at def."))
    second = readme.read_text()
    assert second.count(gate_power.START) == 1 and "Measured at def." in second and "abc" not in second
    assert second.split(gate_power.END)[0].split(gate_power.START)[0] == first.split(gate_power.START)[0]


@pytest.mark.slow
def test_row_for_a_run_uses_the_gate_in_both_modes(gate_run: Project, tmp_path: Path) -> None:
    """The pipeline's own run and baseline: unchanged, the control is exact on its path and other-machine as
    another; a flipped guarded contrast is caught in both modes; a crashed pipeline is caught."""
    from test_regression import copy_run, guarded, scale_values, set_contrast

    base = json.loads((gate_run.root / "baseline.json").read_text())
    control = gate_power.row_for(None, copy_run(gate_run, tmp_path / "same"), base)
    assert control["verdict"] == "exact" and not control["caught"]
    assert control["other_machine"]["verdict"] == "other-machine" and not control["other_machine"]["caught"]
    assert control["other_machine"]["largest_move"] == 0 and control["other_machine"]["values_beyond_drift"] is None
    flipped = copy_run(gate_run, tmp_path / "flipped")
    name, entry = guarded(base)
    set_contrast(flipped, name.partition(" − ")[0], "lipschitz", -entry["value"], 0.0)
    m = gate_power.MUTATIONS[0]
    ranges = {n: 0.0 for n in base["contrasts"]}               # as if the cross-path spread were nil
    caught = gate_power.row_for(m, flipped, base, ranges=ranges)
    assert caught["caught"] and caught["verdict"] == "regression" and caught["failing_contrasts"] == [f"{name} (sign flipped)"]
    assert caught["other_machine"]["caught"] and caught["other_machine"]["largest_move"] > 1
    assert name in caught["other_machine"]["beyond_spread"] and name not in caught["other_machine"]["missed_beyond_spread"]
    moved = copy_run(gate_run, tmp_path / "moved")               # values move, contrasts keep: only (a) sees it
    scale_values(moved, 1.01)
    values_only = gate_power.row_for(m, moved, base, ranges=ranges)
    assert values_only["caught"] and values_only["values_beyond_drift"] > 0 and not values_only["failing_contrasts"]
    assert not values_only["other_machine"]["caught"]          # every contrast moved 1%: beyond a nil spread, passed
    assert values_only["other_machine"]["missed_beyond_spread"] == values_only["other_machine"]["beyond_spread"] != []
    crashed = gate_power.row_for(m, None, base, "Traceback ...")
    assert crashed["caught"] and crashed["verdict"] == "pipeline failed" and crashed["other_machine"]["caught"]


@pytest.mark.slow
def test_drift_stats_on_the_gates_terms(gate_run: Project, tmp_path: Path) -> None:
    from test_regression import copy_run, scale_values

    a = copy_run(gate_run, tmp_path / "a")
    same = gate_power.drift_stats(a, copy_run(gate_run, tmp_path / "b"))
    assert same["bit_identical"] == same["values"] > 0 and same["max_delta_over_scale"] == 0.0
    assert same["compare"].startswith("exact: ")
    c = copy_run(gate_run, tmp_path / "c")
    scale_values(c, 1 + 1e-4)
    moved = gate_power.drift_stats(a, c)
    assert moved["max_delta_over_scale"] == pytest.approx(1e-4, rel=1e-3) and moved["compare"].startswith("drift: ")


@pytest.mark.slow
def test_drift_from_two_finished_runs_writes_drift_json(gate_run: Project, tmp_path: Path) -> None:
    from test_regression import copy_run, scale_values

    one, two = copy_run(gate_run, tmp_path / "one"), copy_run(gate_run, tmp_path / "two")
    scale_values(two, 1 + 1e-4)
    repo = tmp_path / "repo"
    assert gate_power.main(["--repo", str(repo), "--drift-runs", str(one), str(two)]) == 0
    written = json.loads((repo / "reports" / "baseline" / "drift.json").read_text())
    assert written["threads"] == [1, 2] and written["compare"].startswith("drift: ")
    assert written["max_delta_over_scale"] == pytest.approx(1e-4, rel=1e-3)


def test_an_export_leaves_out_the_published_run_as_ci_does(tmp_path: Path) -> None:
    ci_line = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("rm -rf "))
    assert tuple(ci_line.split("#")[0].split()[2:]) == gate_power.PUBLISHED_RUN
    gate_power.export_head(gate_power.head_archive(REPO), tmp_path / "copy")
    assert (tmp_path / "copy" / "dvc.yaml").is_file() and (tmp_path / "copy" / "params.yaml").is_file()
    assert not any((tmp_path / "copy" / path).exists() for path in gate_power.PUBLISHED_RUN)


@pytest.mark.slow
def test_false_alarms_hold_each_run_out_of_the_spread_it_is_judged_by(gate_run: Project, tmp_path: Path) -> None:
    """Runs that differ as seeds and float paths do: each held out is judged against tolerances from the
    others; one that moved twice as far as the rest spread is counted, and only that one."""
    from test_regression import copy_run, set_contrast

    reference = gate_run.root / "metrics"
    lip = json.loads((reference / "contrast.json").read_text())["contrasts"]["top-1"]["lipschitz"]
    value, half = lip["estimate"], (lip["ci95"][1] - lip["ci95"][0]) / 2
    runs = {}
    for name, factor in (("s1", 1.1), ("s2", 0.9), ("baseline", 1.0), ("far", 1.5)):
        runs[name] = copy_run(gate_run, tmp_path / name)
        set_contrast(runs[name], "top-1", "lipschitz", value * factor, half)
    runs["baseline"] = gate_run.root / "baseline.json"                  # a committed baseline is a run too
    result = gate_power.false_alarms(reference, runs)
    failing = {r["held_out"]: r["failing"] for r in result["rows"]}
    assert failing == {"s1": [], "s2": [], "baseline": [], "far": ["top-1 − full: lipschitz (outside tolerance)"]}
    assert result["false_alarms"] == 1 and result["checked"] == 4 * len(regression_contrasts(gate_run))
    assert gate_power.main(["--repo", str(tmp_path / "repo"), "--false-alarms", str(reference),
                            str(runs["s1"]), str(runs["s2"])]) == 0
    assert json.loads((tmp_path / "repo/reports/baseline/false-alarms.json").read_text())["false_alarms"] == 0


def regression_contrasts(gate_run: Project) -> dict:
    return json.loads((gate_run.root / "baseline.json").read_text())["contrasts"]
