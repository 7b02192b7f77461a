"""`ddmbench ablations`: the collector on a fabricated `dvc exp show --json` document (DVC 3.67's exact
layout) and on a real tiny K = 1 run (a one-expert DDM whose trivial router changes nothing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Project, make_dvc_project, run_cli

from ddmbench.errors import ArtifactError
from ddmbench.tools import ablations as ab


def entry(rev: str, name: str | None, k: int, method: str, fids: dict[str, float], *, error: Any = None,
          experiments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One commit or experiment as `dvc exp show --json` prints it."""
    metrics = {"metrics/cluster.json": {"data": {"k": k, "purity": 0.9 if method == "kmeans" else 0.3,
                                                 "nmi": 0.5, "size_cv": 0.1}},
               **{f"metrics/evaluate/{p}.json": {"data": {"fid": v, "kid": v / 100}} for p, v in fids.items()},
               "metrics/router.json": {"data": {"acc": 0.9}}}
    return {"rev": rev, "name": name, "error": error, "experiments": experiments,
            "data": {"rev": rev, "timestamp": "2026-11-25T17:51:52", "deps": {}, "outs": {}, "meta": {},
                     "params": {"params.yaml": {"data": {"cluster": {"k": k, "method": method},
                                                         "experts": list(range(k)), "expert": {"net": "dit-xs"}}}},
                     "metrics": metrics}}


def exp_show_doc() -> list[dict[str, Any]]:
    exps = [entry("a" * 40, "k1-kmeans", 1, "kmeans", {"full": 30.0, "top-2": 31.0}),
            entry("b" * 40, "k4-random", 4, "random", {"full": 50.0}),
            entry("c" * 40, "k8-kmeans", 8, "kmeans", {"full": 45.0, "top-2": 25.5}),
            {"rev": "d" * 40, "name": "broken", "data": {}, "error": {"type": "ReproductionError", "msg": "x"},
             "experiments": None},
            {"rev": "f" * 40, "name": "queued", "error": None, "experiments": None,
             "data": {"rev": "f" * 40, "params": {"params.yaml": {"data": {"cluster": {"k": 2}}}}, "metrics": {}}}]
    return [entry("workspace", None, 8, "kmeans", {"full": 45.0, "top-2": 25.5}),
            entry("e" * 40, "main", 2, "kmeans", {"full": 40.0, "top-2": 28.0},
                  experiments=[{"revs": [x], "executor": None, "name": x["name"]} for x in exps])]


def test_rows_of_a_dvc_exp_show_document() -> None:
    rows = ab.rows_from_exp_show(exp_show_doc())
    # the failed and the metric-less experiment and the workspace are left out
    assert [r.name for r in rows] == ["main", "k1-kmeans", "k4-random", "k8-kmeans"]
    by_name = {r.name: r for r in rows}
    assert by_name["k4-random"].param("cluster.method") == "random" and by_name["k4-random"].param("nope.x") is None
    assert by_name["k8-kmeans"].evaluate["top-2"]["fid"] == 25.5 and "router" not in by_name["k8-kmeans"].evaluate
    assert by_name["k1-kmeans"].cluster["k"] == 1
    assert len(ab.rows_from_exp_show(exp_show_doc(), include_workspace=True)) == 5


def test_table_sorts_by_method_then_k_and_marks_missing_policies() -> None:
    header, cells = ab.table(ab.rows_from_exp_show(exp_show_doc()))
    assert header[:4] == ["experiment", "rev", "K", "method"] and header[-2:] == ["FID full", "FID top-2"]
    assert [c[0] for c in cells] == ["k1-kmeans", "main", "k8-kmeans", "k4-random"]
    random_row = cells[-1]
    assert random_row[-2:] == ["50.00", "—"] and random_row[header.index("purity")] == "0.300"
    md = ab.markdown(ab.rows_from_exp_show(exp_show_doc()), "show.json")
    assert "| k8-kmeans | cccccc" in md and md.count("\n|") == 2 + 4


def test_a_document_that_is_not_exp_show_is_one_error() -> None:
    with pytest.raises(ArtifactError, match="expected a list of commits"):
        ab.rows_from_exp_show({"workspace": {}})


def test_cli_from_json_writes_the_report(project: Project) -> None:
    doc = project.root / "show.json"
    doc.write_text(json.dumps(exp_show_doc()))
    result = run_cli(project.root, "ablations", "--from-json", str(doc), columns=250)
    assert result.exit_code == 0, result.output
    assert "4 runs from" in result.output
    md = (project.root / "runs" / "ablations.md").read_text()
    assert md.startswith("# Ablations") and "| k1-kmeans |" in md
    doc.write_text("{not json")
    bad = run_cli(project.root, "ablations", "--from-json", str(doc), columns=250)
    assert bad.exit_code == 2 and "show.json is not valid JSON" in bad.output and "Traceback" not in bad.output


def test_no_metrics_and_no_experiments_is_one_error(project: Project) -> None:
    result = run_cli(project.root, "ablations", columns=250)
    assert result.exit_code == 2 and "no experiments to list" in result.output


@pytest.mark.slow
def test_real_k1_run_is_collected(tmp_path: Path) -> None:
    """A one-expert DDM end to end: every routed policy is that expert, so full and top-1 give the same FID."""
    project = make_dvc_project(tmp_path / "repo", cluster={"k": 1}, experts=[0], policies=["full", "top-1"])
    for policy in ("full", "top-1"):
        result = run_cli(project.root, "run", "--policy", policy, columns=250)
        assert result.exit_code == 0, result.output
    # `run` needs the DVC project; `dvc exp show` needs git, which this project lacks: collect the workspace instead.
    shutil.rmtree(project.root / ".dvc")
    result = run_cli(project.root, "ablations", columns=250)
    assert result.exit_code == 0, result.output
    fids = {p: json.loads((project.root / "metrics" / "evaluate" / f"{p}.json").read_text())["fid"]
            for p in ("full", "top-1")}
    assert fids["full"] == pytest.approx(fids["top-1"], rel=1e-9)
    md = (project.root / "runs" / "ablations.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| workspace"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1" and cells[3] == "kmeans"            # K, method
    assert cells[-2] == f"{fids['full']:.2f}" and cells[-1] == f"{fids['top-1']:.2f}"
    cluster = json.loads((project.root / "metrics" / "cluster.json").read_text())
    assert cluster["sizes"] == [240] and cluster["size_cv"] == 0.0


def grid_row(name: str, k: int, method: str, seed: int, estimate: float, steps: int = 600) -> ab.Row:
    """One finished run of the sweep with a top-2 − full KID contrast."""
    contrast = {"reference": "full", "contrasts": {"top-2": {"kid": {"estimate": estimate, "ci95": [0, 0],
                                                                     "estimand": "x", "p_value": 0.5}}}}
    return ab.Row(name=name, rev=name, params={"seed": seed, "cluster": {"k": k, "method": method, "features": "embedder"},
                                               "expert": {"steps": steps // k}, "monolith": {"steps": None}},
                  contrast=contrast)


def test_grid_summarises_each_cell_across_seeds_and_refuses_unmatched_budgets(tmp_path: Path) -> None:
    from scipy import stats

    rows = [grid_row(f"k{k}-{m}-s{s}", k, m, s, v) for k, m, vals in
            ((2, "two-stage", (-1.0, -2.0, -3.0)), (8, "two-stage", (-4.0, -5.0, -9.0)), (8, "random", (0.5, -0.5, 1.0)))
            for s, v in enumerate(vals)]
    rows.append(ab.Row(name="no-contrast", rev="x", params={"seed": 9, "cluster": {"k": 4, "method": "random"}}))
    cells = ab.grid(rows)
    assert [(c["clustering"], c["k"], c["r"]) for c in cells] == [
        ("random", 8, 3), ("two-stage on embedder", 2, 3), ("two-stage on embedder", 8, 3)]
    k8 = cells[2]
    expected = stats.t.interval(0.95, 2, loc=-6.0, scale=stats.sem([-4.0, -5.0, -9.0]))
    assert k8["mean"] == pytest.approx(-6.0) and k8["ci95"] == pytest.approx(list(expected))
    assert cells[0]["agree_in_sign"] == 2 and (k8["ddm_steps"], k8["monolith_steps"]) == (600, 600)
    assert "| two-stage on embedder | 8 | 3 | -4, -5, -9 | -6 [" in ab.grid_markdown(cells)
    from ddmbench.tools.ablation_figure import ablation_figure

    ablation_figure(cells, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ArtifactError, match="differ in training steps"):
        ab.grid([*rows, grid_row("k8-more", 8, "random", 7, 0.0, steps=1200)])
    with pytest.raises(ArtifactError, match="seed repeated"):
        ab.grid([*rows, grid_row("k8-again", 8, "random", 0, 0.0)])


def test_cli_collects_run_folders_into_the_grid(tmp_path: Path, project: Project) -> None:
    """--from-runs: each folder's params.yaml and metrics/ become a row; the grid, its JSON and figure follow."""
    import yaml

    runs = []
    for k, method, seed, est in ((2, "two-stage", 0, -1.0), (2, "two-stage", 1, -2.0), (2, "two-stage", 2, -1.5),
                                 (2, "random", 0, 0.2)):
        row = grid_row("x", k, method, seed, est)
        root = tmp_path / f"k{k}-{method}-s{seed}"
        (root / "metrics" / "evaluate").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump({**row.params, "policies": ["full", "top-2"]}))
        (root / "metrics" / "contrast.json").write_text(json.dumps(row.contrast))
        (root / "metrics" / "evaluate" / "full.json").write_text(json.dumps({"fid": 3.0, "kid": 0.01}))
        # left over from another profile run in the same folder: not this run's, never a column
        (root / "metrics" / "evaluate" / "uniform.json").write_text(json.dumps({"fid": 39.0, "kid": 0.5}))
        runs.append(root)
    args = [a for r in runs for a in ("--from-runs", str(r))]
    result = run_cli(project.root, "ablations", *args, columns=250)
    assert result.exit_code == 0, result.output
    out = json.loads((project.root / "runs" / "ablations.json").read_text())
    assert [(c["clustering"], c["r"]) for c in out["cells"]] == [("random", 1), ("two-stage on embedder", 3)]
    assert (project.root / "runs" / "ablations-top-2-kid.png").exists()
    md = (project.root / "runs" / "ablations.md").read_text()
    assert "| k2-two-stage-s1 |" in md and "FID full" in md and "FID uniform" not in md
    bad = run_cli(project.root, "ablations", "--from-runs", str(tmp_path / "nope"), columns=250)
    assert bad.exit_code == 2 and "nope/params.yaml is missing" in bad.output


@pytest.mark.parametrize(("policy", "published"), [("top-2", "ablations.json"), ("top-1", "ablations-secondary.json")])
def test_the_published_grid_is_what_its_published_runs_give(policy: str, published: str) -> None:
    """reports/ablations*.json (docs/replication.md, "Ablations") re-collected from reports/ablation-runs/ by today's code."""
    runs = sorted((REPO_ROOT / "reports" / "ablation-runs").iterdir())
    assert len(runs) == 18
    cells = ab.grid([ab.row_from_run(run) for run in runs], policy, "kid")
    assert json.loads(json.dumps(cells)) == json.loads((REPO_ROOT / "reports" / published).read_text())["cells"]
    assert {(c["k"], c["r"]) for c in cells} == {(2, 3), (4, 3), (8, 3)}
