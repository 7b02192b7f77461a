"""The evaluate-only pipeline: a DDM exported by one project and imported by another (``ddm.import``) goes through
`ddmbench repro` with no training stage, samples bit-identical images, and yields the report and a baseline;
without a cluster manifest the analyses that need one are skipped with the reason, and the policies that need
one are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Project, invoke, make_dvc_project, run_cli

from ddmbench.io import load_tensors

pytestmark = pytest.mark.slow   # a whole DVC pipeline run


@pytest.fixture(scope="module")
def imported_run(gate_run: Project, tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str]:
    base = tmp_path_factory.mktemp("import")
    trained = Path(shutil.copytree(gate_run.root, base / "trained"))
    project = make_dvc_project(base / "repo", ddm={"train": [], "import": {"tiny": "ddms/tiny"}}, experts=[],
                               policies=["full", "top-1", "oracle"])
    invoke(trained, "export-ddm", str(project.root / "ddms" / "tiny"))
    return project, invoke(project.root, "repro")


def test_no_training_stage_runs_and_the_import_is_recorded(imported_run: tuple[Project, str]) -> None:
    project, output = imported_run
    assert "import-ddm@tiny" in output
    for stage in ("cluster@", "train-router", "train-expert", "train-monolith"):
        assert stage not in output, stage
    record = json.loads(project.paths.import_metrics.read_text())
    folder = project.root / "ddms" / "tiny"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(record["sha256"]) == on_disk and all(len(d) == 64 for d in record["sha256"].values())
    assert record["predictions"] == ["velocity", "velocity"] and record["time_range"] == [0.0, 1.0]


@pytest.mark.parametrize("policy", ["full", "top-1"])
def test_imported_samples_are_the_trained_projects_bit_for_bit(imported_run: tuple[Project, str], gate_run: Project,
                                                               policy: str) -> None:
    project, _ = imported_run
    ours = load_tensors(project.paths.samples(policy), "sample")
    theirs = load_tensors(gate_run.paths.samples(policy), "sample")
    assert torch.equal(ours["seeds"], theirs["seeds"]) and torch.equal(ours["images"], theirs["images"])


def test_the_report_and_a_baseline_come_from_the_imported_run(imported_run: tuple[Project, str]) -> None:
    project, _ = imported_run
    report = project.paths.report_md.read_text()
    assert "imported: tiny from ddms/tiny" in report and "Skipped" not in report
    accuracy = json.loads(project.paths.expert_accuracy.read_text())
    assert "rows" in accuracy and "skipped" not in accuracy           # the DDM brought its clusters
    sizes = json.loads(project.paths.cluster_metrics.read_text())["sizes"]
    assert sum(sizes) == len(load_tensors(project.paths.dataset, "prepare")["train_x"])
    invoke(project.root, "baseline", "--why", "an imported DDM's run", "--current", str(project.root / "metrics"),
           "--out", str(project.root / "baseline.json"))
    baseline = json.loads((project.root / "baseline.json").read_text())
    assert any(name.startswith("top-1 − full") for name in baseline["contrasts"])
    assert any(name.startswith("oracle − full") for name in baseline["contrasts"])


def test_without_a_cluster_manifest_the_analyses_that_need_one_are_skipped(imported_run: tuple[Project, str],
                                                                          tmp_path: Path) -> None:
    project = Project(Path(shutil.copytree(imported_run[0].root, tmp_path / "repo")), imported_run[0].raw)
    folder = project.root / "ddms" / "tiny"
    manifest = yaml.safe_load((folder / "ddm.yaml").read_text())
    del manifest["clusters"]
    (folder / "ddm.yaml").write_text(yaml.safe_dump(manifest))
    (folder / "clusters.json").unlink()
    result = run_cli(project.root, "import-ddm")            # the profile still lists the oracle
    assert result.exit_code == 2 and "policies: oracle needs the DDM's cluster manifest" in result.output
    assert len(result.output.strip().splitlines()) == 1
    project.update(policies=["full", "top-1"])
    invoke(project.root, "repro")
    reason = "ddms/tiny/ddm.yaml names no cluster manifest"
    for path in (project.paths.expert_accuracy, project.paths.router_calibration):
        assert reason in json.loads(path.read_text())["skipped"]
    assert reason in json.loads(project.paths.analysis_metrics("top-1").read_text())["alignment"]["skipped"]
    report = project.paths.report_md.read_text()
    assert report.count(f"Skipped: {reason}") == 3 and "clusters | none" in report.replace("*", "")


def test_the_documented_python_usage_runs(gate_run: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The "From Python" block of docs/external-ddms.md, on an exported DDM and the gate run's evaluator."""
    doc = (Path(__file__).parent.parent / "docs" / "external-ddms.md").read_text()
    code = doc.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    invoke(gate_run.root, "export-ddm", str(tmp_path / "ddm"))
    code = (code.replace("path/to/ddm", str(tmp_path / "ddm")).replace("range(64)", "range(8)")
            .replace("nfe_steps=20", "nfe_steps=2").replace('"outputs/', f'"{gate_run.root}/outputs/'))
    exec(compile(code, "docs/external-ddms.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "FID at N = 8 generated" in printed[1]
