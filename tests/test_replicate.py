"""`ddmbench replicate`: DVC queue commands and the across-seed aggregation, on synthetic experiment records."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT, invoke, make_project, run_cli
from scipy import stats

from ddmbench.analysis.stats import holm
from ddmbench.config import parse_config
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.tools.replicate import (
    ExperimentRecord,
    aggregate,
    check_records,
    declared_pairs,
    headline,
    launch,
    parse_seeds,
    queue_commands,
    records_from_exp_show,
)

PARAMS = {"seed": 0, "sample": {"n": 300}, "policies": ["full", "top-2"]}


def _entry(estimate: float) -> dict[str, Any]:
    return {"estimate": estimate, "ci95": [estimate - 0.5, estimate + 0.5], "estimand": "paired difference",
            "p_value": 0.04}


def _contrast(kid: float, amp: float, fid: float = 1.0, conv: float = 0.01) -> dict[str, Any]:
    return {"reference": "full", "contrasts": {"top-2": {
        "fid": _entry(fid), "kid": _entry(kid), "convergence_error": _entry(conv), "lipschitz": _entry(0.0),
        "amplification": {"eps_0.1": _entry(amp), "eps_1": _entry(amp / 2)}}}}


def _exp(name: str, seed: int, contrast: dict[str, Any] | None, digest: str | None = "abc123",
         state: str = "success", **params: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if contrast is not None:
        metrics["metrics/contrast.json"] = {"data": contrast}
    if digest:
        metrics["metrics/evaluate/full.json"] = {"data": {"fid": 3.0, "evaluator_sha256": digest}}
    data = {"rev": f"{name}-rev", "params": {"params.yaml": {"data": {**PARAMS, **params, "seed": seed}}},
            "metrics": metrics}
    return {"revs": [{"rev": f"{name}-rev", "name": name, "data": data if state == "success" else None}],
            "executor": {"state": state} if state != "success" else None, "name": name}


def _doc(*exps: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"rev": "workspace", "name": None, "data": None, "experiments": None},
            {"rev": "abcdef", "name": "main", "data": None, "experiments": list(exps)}]


def _records(*values: tuple[float, float]) -> list[ExperimentRecord]:
    return [ExperimentRecord(f"exp-{i}", f"rev{i}", {**PARAMS, "seed": i}, _contrast(k, a), {"abc123"})
            for i, (k, a) in enumerate(values)]


def test_seeds_and_queue_commands() -> None:
    assert parse_seeds(["0,1,2"]) == [0, 1, 2] and parse_seeds(["3", "4 5"]) == [3, 4, 5]
    for bad in (["a"], ["1,1"], ["-1"], [""]):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    assert queue_commands([0, 7], jobs=2) == [["dvc", "exp", "run", "--queue", "-S", "seed=0"],
                                               ["dvc", "exp", "run", "--queue", "-S", "seed=7"],
                                               ["dvc", "queue", "start", "--jobs", "2"]]
    with pytest.raises(ConfigError, match="--jobs"):
        queue_commands([0], jobs=0)
    assert queue_commands([3], jobs=1, data_root="/abs/data")[0] == ["dvc", "exp", "run", "--queue", "-S", "seed=3",
                                                                     "-S", "data.root=/abs/data"]


def test_launch_runs_the_commands_in_order_and_stops_at_a_failure(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@ $MARK" >> {log}\ncase "$*" in *seed=9*) echo "ERROR: no git" >&2; exit 3;; esac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    launch(tmp_path, queue_commands([0, 1], jobs=2), {"MARK": "x"})
    assert log.read_text().splitlines() == ["exp run --queue -S seed=0 x", "exp run --queue -S seed=1 x",
                                            "queue start --jobs 2 x"]
    with pytest.raises(ArtifactError, match=r"`dvc exp run --queue -S seed=9` failed \(exit 3\): ERROR: no git"):
        launch(tmp_path, queue_commands([9, 10], jobs=1))
    assert log.read_text().splitlines()[-1] == "exp run --queue -S seed=9 "   # nothing after the failure


def test_aggregate_between_seed_interval_and_sign_agreement() -> None:
    records = _records((-1.0, 2.0), (-2.0, 1.0), (-0.5, -1.0))
    out = aggregate(records, [("top-2", "kid"), ("top-2", "amplification@0.1")])
    kid, amp = out["contrasts"]
    assert [s["estimate"] for s in kid["per_seed"]] == [-1.0, -2.0, -0.5] and kid["per_seed"][0]["ci95"] == [-1.5, -0.5]
    b = kid["between_seeds"]
    v = np.array([-1.0, -2.0, -0.5])
    lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
    assert b["mean"] == pytest.approx(v.mean()) and b["sd"] == pytest.approx(v.std(ddof=1))
    assert b["ci95"] == pytest.approx([lo, hi]) and (b["n_negative"], b["agree_in_sign"], b["r"]) == (3, 3, 3)
    assert amp["between_seeds"]["agree_in_sign"] == 2 and amp["between_seeds"]["n_positive"] == 2
    assert out["seeds"] == [0, 1, 2] and out["evaluator_sha256"] == "abc123"
    assert "given these trained models" in out["uncertainty"]["sampling"] and "training seeds" in out["uncertainty"]["training"]
    assert aggregate(records[:2], [("top-2", "kid")])["contrasts"][0]["between_seeds"]["ci95"] is None  # R < 3
    assert b["p_value"] == pytest.approx(stats.ttest_1samp(v, 0.0).pvalue) and b["family"] == "secondary"


def test_between_seed_p_values_primary_alone_secondaries_holm_adjusted() -> None:
    records = _records((-1.0, 2.0), (-2.0, 1.0), (-0.5, -1.0))
    for r, conv in zip(records, (0.5, 0.7, 0.6)):
        r.contrast["contrasts"]["top-2"]["convergence_error"] = {"estimate": conv, "ci95": None}
    pairs = [("top-2", "kid"), ("top-2", "amplification@0.1"), ("top-2", "convergence_error")]
    kid, amp, conv = (c["between_seeds"] for c in aggregate(records, pairs, primary=[("top-2", "kid")])["contrasts"])
    p = [stats.ttest_1samp(np.array(v), 0.0).pvalue for v in ([-1.0, -2.0, -0.5], [2.0, 1.0, -1.0], [0.5, 0.7, 0.6])]
    assert (kid["family"], kid["p_adjusted"]) == ("primary", pytest.approx(p[0]))      # judged on its own p
    assert amp["family"] == conv["family"] == "secondary"
    assert [amp["p_adjusted"], conv["p_adjusted"]] == pytest.approx(holm(p[1:]))
    assert conv["p_adjusted"] == pytest.approx(min(1.0, 2 * p[2]))                    # the smaller p, times 2
    two = aggregate(records[:2], pairs[:1], primary=[("top-2", "kid")])["contrasts"][0]["between_seeds"]
    assert two["p_value"] is None and two["p_adjusted"] is None                         # R < 3
    with pytest.raises(ArtifactError, match=r"experiment exp-0 \(seed 0\) has no top-2 − full estimate in amplification@7"):
        aggregate(records, [("top-2", "amplification@7")])


def test_exp_show_records_skip_unfinished_and_keep_digests() -> None:
    doc = _doc(_exp("a", 0, _contrast(-1, 1)), _exp("b", 1, _contrast(-2, 1)), _exp("q", 2, None, state="queued"),
               _exp("f", 3, None, state="failed"))
    records, other = records_from_exp_show(doc)
    assert [(r.name, r.seed, r.rev) for r in records] == [("a", 0, "a-rev"), ("b", 1, "b-rev")]
    assert records[0].digests == {"abc123"} and other == {"queued": 1, "failed": 1}
    with pytest.raises(ArtifactError, match="experiment c has no params.yaml seed or no metrics/contrast.json"):
        records_from_exp_show(_doc(_exp("c", 4, None)))


def test_check_refuses_mixed_evaluators_params_and_missing_seeds() -> None:
    def recs(*exps: dict[str, Any]) -> list[ExperimentRecord]:
        return records_from_exp_show(_doc(*exps))[0]

    same = recs(_exp("a", 0, _contrast(-1, 1)), _exp("b", 1, _contrast(-1, 1)), _exp("c", 2, _contrast(-1, 1)))
    assert [r.name for r in check_records(same, [2, 0])] == ["c", "a"]
    mixed = recs(_exp("a", 0, _contrast(-1, 1)), _exp("b", 1, _contrast(-1, 1), digest="ffff00"))
    with pytest.raises(ArtifactError, match="evaluator digests differ: a abc123 vs b ffff00"):
        check_records(mixed, [0, 1])
    partial = recs(_exp("a", 0, _contrast(-1, 1)), _exp("b", 1, _contrast(-1, 1), digest=None))
    with pytest.raises(ArtifactError, match=r"record no evaluator digest: \['b'\]"):
        check_records(partial, [0, 1])
    other = recs(_exp("a", 0, _contrast(-1, 1)), _exp("b", 1, _contrast(-1, 1), policies=["full", "top-1"]))
    with pytest.raises(ArtifactError, match="a and b differ in params key 'policies', not only in seed"):
        check_records(other, [0, 1])
    with pytest.raises(ArtifactError, match=r"no finished experiment for seed\(s\) \[5\]"):
        check_records(same, [0, 5])
    with pytest.raises(ArtifactError, match="several experiments per seed"):
        check_records(same + recs(_exp("d", 0, _contrast(-1, 1))), [0, 1])


def test_headline_is_the_declared_primaries_then_quality_and_convergence() -> None:
    cfg = parse_config({"policies": ["full", "top-2"],
                        "report": {"primary": [{"policy": "top-2", "metrics": ["kid", "amplification@0.1"]}]}})
    entries = {("top-2", m): {} for m in ("fid", "kid", "convergence_error", "amplification@0.1")}
    assert headline(cfg, entries) == [("top-2", "kid"), ("top-2", "amplification@0.1"), ("top-2", "fid"),
                                      ("top-2", "convergence_error")]


def test_replicate_cli_collects_a_saved_exp_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "repo", policies=["full", "top-1"],
                           report={"primary": [{"policy": "top-1", "metrics": ["kid", "amplification@0.1"]}]})
    c = {"reference": "full", "contrasts": {"top-1": _contrast(-1, 1)["contrasts"]["top-2"]}}
    doc = _doc(*(_exp(f"e{s}", s, c) for s in range(3)))
    (project.root / "exp.json").write_text(json.dumps(doc))
    output = invoke(project.root, "replicate", "--collect", "--seeds", "0,1,2", "--from-json", "exp.json")
    out = json.loads((project.root / "reports" / "replicate.json").read_text())
    assert [c["metric"] for c in out["contrasts"]] == ["kid", "amplification@0.1", "fid", "convergence_error"]
    assert "across training seeds" in output and "3 of 3" in output
    named = invoke(project.root, "replicate", "--seeds", "0,1,2", "--from-json", "exp.json", "--out", "reports/r-ci.json")
    assert "wrote reports/r-ci.json" in named
    assert json.loads((project.root / "reports" / "r-ci.json").read_text()) == out
    from typer.testing import CliRunner

    from ddmbench.cli import app

    monkeypatch.chdir(project.root)
    (project.root / "other.yaml").write_text((project.root / "params.yaml").read_text())
    bad = CliRunner(env={"NO_COLOR": "1"}).invoke(app, ["replicate", "--run", "--seeds", "0,1", "--params", "other.yaml"])
    assert bad.exit_code == 2 and "cp other.yaml params.yaml" in bad.output and "Traceback" not in bad.output
    assert "--seeds" in run_cli(project.root, "replicate", "--seeds", "x").output


def test_replication_table_separates_sampling_from_training_uncertainty() -> None:
    from ddmbench.report.tables import replication

    headers, rows = replication(aggregate(_records((-1.0, 2.0), (-2.0, 1.0), (-0.5, -1.0)), [("top-2", "kid")]))
    assert "sampling" in headers[2] and "training" in headers[3]
    assert rows[0][:2] == ["top-2", "kid"] and rows[0][2].startswith("seed 0: -1 [-1.5, -0.5]")
    assert rows[0][4] == "3 of 3" and rows[0][3].startswith("-1.17 [")


def test_collect_from_run_folders(tmp_path: Path) -> None:
    """--from-runs reads finished run folders (params.yaml + metrics/) instead of DVC experiments: same
    aggregation, same checks (one evaluator, params equal apart from seed), one-line errors."""
    import yaml

    from ddmbench.tools.replicate import records_from_runs

    def run_folder(seed: int, kid: float, digest: str = "abc123", **params: Any) -> Path:
        root = tmp_path / f"run{seed}-{digest}"
        (root / "metrics" / "evaluate").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, **params, "seed": seed}))
        (root / "metrics" / "contrast.json").write_text(json.dumps(_contrast(kid, 1.0)))
        (root / "metrics" / "evaluate" / "full.json").write_text(json.dumps({"fid": 3.0, "evaluator_sha256": digest}))
        return root

    runs = [run_folder(s, k) for s, k in ((0, -1.0), (1, -2.0), (2, 0.5))]
    records = records_from_runs(runs)
    assert [r.seed for r in records] == [0, 1, 2] and all(r.digests == {"abc123"} for r in records)
    out = aggregate(check_records(records, [0, 1, 2]), [("top-2", "kid")])
    b = out["contrasts"][0]["between_seeds"]
    assert b["mean"] == pytest.approx(-2.5 / 3) and (b["n_negative"], b["n_positive"]) == (2, 1)
    with pytest.raises(ArtifactError, match="evaluator digests differ"):
        check_records(records_from_runs([runs[0], run_folder(1, -2.0, digest="ffff")]), [0, 1])
    with pytest.raises(ArtifactError, match="differ in params key 'sample'"):
        check_records(records_from_runs([runs[0], run_folder(3, 0.0, sample={"n": 10})]), [0, 3])
    with pytest.raises(ArtifactError, match="nowhere/params.yaml is missing: --from-runs takes folders"):
        records_from_runs([tmp_path / "nowhere"])
    (runs[2] / "metrics" / "contrast.json").unlink()
    with pytest.raises(ArtifactError, match="contrast.json is missing"):
        records_from_runs(runs)


@pytest.mark.parametrize("profile", ["fashion-dit", "ci", "default"])
def test_the_published_replications_are_what_their_published_runs_give(profile: str) -> None:
    """reports/replication/<profile>.json (docs/replication.md) re-collected from reports/replication/<profile>/s* by today's
    code, with the profile's declared primaries."""
    from ddmbench.config.loading import load_config
    from ddmbench.report.summary import contrast_entries
    from ddmbench.tools.replicate import records_from_runs

    root = REPO_ROOT / "reports" / "replication"
    runs = sorted((root / profile).glob("s*"))
    chosen = check_records(records_from_runs(runs), [0, 1, 2])
    cfg = load_config(REPO_ROOT / ("params.yaml" if profile == "default" else f"params/{profile}.yaml"))
    result = aggregate(chosen, headline(cfg, contrast_entries(chosen[0].contrast)), primary=declared_pairs(cfg))
    published = json.loads((root / f"{profile}.json").read_text())

    def without_names(contrasts: list[dict]) -> list[dict]:  # a run's name is the folder path it was read from
        return [{**c, "per_seed": [{k: v for k, v in s.items() if k != "experiment"} for s in c["per_seed"]]}
                for c in json.loads(json.dumps(contrasts))]

    assert without_names(result["contrasts"]) == without_names(published["contrasts"])
    assert [s["experiment"] for s in published["contrasts"][0]["per_seed"]] == [
        f"reports/replication/{profile}/s{seed}" for seed in (0, 1, 2)]
    assert published["seeds"] == [0, 1, 2]
