"""`ddmbench run` goes through DVC's DAG: freshness comes from params and dependency hashes (dvc.lock), a policy
outside `policies` lands in the adhoc folders, and a busy folder is refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, Project, invoke, make_dvc_project, make_project, run_cli

from ddmbench.io import load_tensors
from ddmbench.pipeline import run as pipeline
from ddmbench.pipeline.paths import Paths

# Smaller than the shared tiny project: this file trains every model twice.
TINIER = {"expert": {"steps": 6}, "monolith": {"steps": 4}, "router": {"steps": 4}, "evaluator": {"steps": 4},
          "sample": {"n": 16}, "evaluate": {"kid_subset_size": 8},
          "analysis": {"n": 4, "eps": [1.0], "bootstrap": 100}}


def _status(root: Path, *targets: str) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status([f"{root / 'dvc.yaml'}:{target}" for target in targets])


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    project = make_dvc_project(tmp_path_factory.mktemp("run-dvc") / "repo", **TINIER)
    yield project, invoke(project.root, "run", "--policy", "full")


@pytest.fixture
def copy_of(ran: tuple[Project, str], tmp_path: Path) -> Project:
    project, _ = ran
    shutil.copytree(project.root, tmp_path / "repo")
    return Project(tmp_path / "repo", project.raw)


@pytest.mark.slow
def test_first_run_reproduces_the_dag_and_leaves_it_clean(ran: tuple[Project, str]) -> None:
    project, output = ran
    for stage in ("prepare", "train-evaluator", "cluster@here", "train-router@here", "train-expert@0", "train-expert@1",
                  "train-monolith@here", "sample@full", "evaluate@full", "analyze@full"):
        assert f"{stage}: not in dvc.lock yet; running" in output, stage
    assert "top-1" not in output and "report" not in output        # only what `full` needs
    assert _status(project.root, "analyze@full") == {}
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    assert {"train-expert@0", "train-expert@1", "sample@full", "evaluate@full", "analyze@full"} <= set(lock)
    assert "FD, classifier features" in output and "policy full" in output


@pytest.mark.slow
def test_repro_is_dvc_repro_in_one_process(copy_of: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ddmbench repro TARGET`: DVC decides (dvc.lock), the stale stages run here, and DVC then finds the
    targets up to date; with nothing stale it runs nothing."""
    output = invoke(copy_of.root, "repro", "analyze@full")
    assert "analyze@full: up to date" in output and "0 stage(s) ran; everything was up to date" in output
    copy_of.paths.samples("full").unlink()
    output = invoke(copy_of.root, "repro", "evaluate@full")
    assert "sample@full: outputs/samples/full.pt deleted; running `ddmbench sample --policy full`" in output
    # the same seeds give the same bytes, so DVC finds evaluate@full's deps unchanged
    assert "train-expert@0: up to date" in output and "evaluate@full: up to date" in output
    assert "1 stage(s) ran: sample@full" in output
    assert _status(copy_of.root, "evaluate@full") == {}
    shutil.copy(copy_of.params, copy_of.root / "elsewhere.yaml")
    monkeypatch.chdir(copy_of.root)
    from typer.testing import CliRunner

    from ddmbench.cli import app
    result = CliRunner(env={"NO_COLOR": "1"}).invoke(app, ["repro", "--params", "elsewhere.yaml"])
    assert result.exit_code == 2 and "`ddmbench repro` goes through DVC" in _error_line(result)


@pytest.mark.slow
def test_changed_expert_steps_retrains_the_experts(copy_of: Project) -> None:
    """The stale-params test: the old `run` kept the old experts because their files existed."""
    paths = copy_of.paths
    untouched = {p: p.stat().st_mtime_ns for p in (paths.model("evaluator"), paths.model("router"), paths.clusters)}
    assert load_tensors(paths.expert(0), "expert")["meta"]["steps"] == 6
    output = invoke(copy_of.root, "run", "--policy", "full")
    assert "train-expert@0: up to date" in output and "sample@full: up to date" in output   # nothing changed yet

    copy_of.update(expert={"steps": 3})
    output = invoke(copy_of.root, "run", "--policy", "full")
    for k in (0, 1):
        assert f"train-expert@{k}: params.yaml: expert modified; running" in output
        assert load_tensors(paths.expert(k), "expert")["meta"]["steps"] == 3
        assert json.loads(paths.expert_metrics(k).read_text())["steps"] == 3
    assert "train-monolith@here: params.yaml: expert.steps modified" in output   # its default budget is K x expert.steps
    for stage in ("prepare", "train-evaluator", "cluster@here", "train-router@here"):
        assert f"{stage}: up to date" in output
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert "sample@full: outputs/ddm modified" in output
    assert _status(copy_of.root, "analyze@full") == {}


@pytest.mark.slow
def test_policy_outside_policies_is_marked_adhoc(copy_of: Project) -> None:
    paths, adhoc = copy_of.paths, pipeline.AdhocPaths(copy_of.root)
    output = invoke(copy_of.root, "run", "--policy", "sample-1")
    assert "outside DVC" in output and "outputs/adhoc/" in output and "metrics/adhoc/" in output
    assert "sample@" not in output and "train-expert@0: up to date" in output
    assert adhoc.samples("sample-1") == copy_of.root / "outputs" / "adhoc" / "samples" / "sample-1.pt"
    for path in (adhoc.samples("sample-1"), adhoc.eval_metrics("sample-1"), adhoc.analysis_metrics("sample-1"),
                 adhoc.curves("sample-1"), adhoc.quality("sample-1")):
        assert path.exists(), path
    for path in (paths.samples("sample-1"), paths.eval_metrics("sample-1"), paths.analysis_metrics("sample-1")):
        assert not path.exists(), path
    assert json.loads(adhoc.sample_metrics("sample-1").read_text())["expert_evals_per_image"] == 3
    assert _status(copy_of.root, "analyze@full") == {}   # nothing DVC tracks was touched


def test_adhoc_paths_move_every_per_policy_file() -> None:
    """Any Paths method that takes a policy label must be redirected, or an adhoc policy would write into a
    folder that a DVC stage hashes (outputs/samples is a dep of report)."""
    import inspect

    root = Path("/repo")
    per_policy = {n for n, f in vars(Paths).items() if inspect.isfunction(f) and "label" in inspect.signature(f).parameters}
    assert per_policy >= {"samples", "sample_metrics", "eval_metrics", "quality", "analysis_metrics",
                          "analysis_values", "curves"}
    for name in per_policy:
        normal, moved = getattr(Paths(root), name)("x"), getattr(pipeline.AdhocPaths(root), name)("x")
        assert moved != normal and "adhoc" in moved.parts and moved.name == normal.name, name
    assert pipeline.AdhocPaths(root).expert(0) == Paths(root).expert(0)


def test_every_dvc_stage_command_runs_in_process() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"].replace("${item}", "0")
        call = pipeline.stage_call(cmd)
        assert call is not None and call[0] == name.replace("-", "_"), (name, cmd)
    assert pipeline.stage_call("python train.py") is None
    assert pipeline.stage_call("ddmbench sample --policy full --k 2") is None
    assert pipeline.stage_call("ddmbench not-a-stage") is None


def test_params_other_than_the_repo_params_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo")
    other = project.root / "other.yaml"
    shutil.copy(project.params, other)
    old = Path.cwd()
    os.chdir(project.root)
    try:
        from typer.testing import CliRunner

        from ddmbench.cli import app

        result = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"}).invoke(app, ["run", "--policy", "full",
                                                                                  "--params", "other.yaml"])
    finally:
        os.chdir(old)
    line = _error_line(result)
    assert "--params other.yaml" in line and "params.yaml" in line and "cp other.yaml params.yaml" in line


def test_run_without_dvc_is_one_line(project: Project) -> None:
    line = _error_line(run_cli(project.root, "run", "--policy", "full"))
    assert "no dvc.yaml" in line
    shutil.copy(REPO_ROOT / "dvc.yaml", project.root / "dvc.yaml")
    line = _error_line(run_cli(project.root, "run", "--policy", "full"))
    assert "not a DVC project" in line and "dvc init --no-scm" in line
    assert not (project.root / "outputs").exists()


@pytest.fixture
def dvc_project(tmp_path: Path) -> Project:
    return make_dvc_project(tmp_path / "repo")


def test_second_ddmbench_run_is_refused(dvc_project: Project) -> None:
    with pipeline.run_lock(dvc_project.root):
        line = _error_line(run_cli(dvc_project.root, "run", "--policy", "full"))
    assert "another `ddmbench run`" in line and f"pid {os.getpid()}" in line and "ddmbench-run.lock" in line
    assert not (dvc_project.root / "outputs").exists()


@pytest.mark.slow
def test_run_while_dvc_holds_its_lock_is_refused(dvc_project: Project) -> None:
    from dvc.repo import Repo

    with Repo(str(dvc_project.root)) as repo, repo.lock:
        line = _error_line(run_cli(dvc_project.root, "run", "--policy", "full"))
    assert "DVC is busy" in line and f"pid {os.getpid()}" in line and ".dvc/tmp/lock" in line
    assert not (dvc_project.root / "outputs").exists()


def test_run_while_a_dvc_stage_runs_is_refused(dvc_project: Project) -> None:
    """`dvc repro` releases its repo lock while a stage's command runs; the stage is then in .dvc/tmp/rwlock."""
    rwlock = dvc_project.root / ".dvc" / "tmp" / "rwlock"
    out = str(dvc_project.root / "outputs" / "evaluator.pt")
    rwlock.write_text(json.dumps({"write": {out: {"pid": os.getpid(), "cmd": "dvc repro"}}, "read": {}}))
    line = _error_line(run_cli(dvc_project.root, "run", "--policy", "full"))
    assert "a DVC stage is running here" in line and f"pid {os.getpid()}: dvc repro" in line
    rwlock.write_text(json.dumps({"write": {out: {"pid": 2**22 + 12345, "cmd": "dvc repro"}}, "read": {}}))
    with pipeline.dvc_repo(dvc_project.root):  # a dead holder (a killed `dvc repro`) does not block
        pass


@pytest.mark.slow
def test_repro_jobs_runs_a_foreach_group_in_worker_processes(copy_of: Project, tmp_path: Path) -> None:
    """`ddmbench repro --jobs 2`: the stale members of a foreach group run in two spawned processes, DVC
    records them (a second repro runs nothing, `dvc status` is clean), and a worker's output is the bytes an
    in-process run with the same thread count writes."""
    import torch

    serial = Project(tmp_path / "serial", copy_of.raw)
    shutil.copytree(copy_of.root, serial.root)
    for project in (copy_of, serial):                       # two stale members of sample@*, not in the run cache
        project.update(sample={"n": 12})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)                            # --jobs 2: one thread per worker
        output = invoke(copy_of.root, "repro", "--jobs", "2")
        torch.set_num_threads(1)
        invoke(serial.root, "repro", "sample@full", "sample@top-1")
    finally:
        torch.set_num_threads(threads)
    assert "sample@*: 2 stale stages in 2 processes of 1 thread(s): sample@full, sample@top-1" in output
    for stage in ("sample@full", "sample@top-1"):
        assert f"{stage}: ran in a worker process; recorded" in output, stage
    assert _status(copy_of.root) == {}
    assert "0 stage(s) ran" in invoke(copy_of.root, "repro", "--jobs", "2")
    for label in ("full", "top-1"):
        ours, theirs = (load_tensors(p.paths.samples(label), "sample") for p in (copy_of, serial))
        assert ours.keys() == theirs.keys()
        for key in ours:
            same = torch.equal(ours[key], theirs[key]) if isinstance(ours[key], torch.Tensor) else ours[key] == theirs[key]
            assert same, (label, key, ours[key] if not isinstance(ours[key], torch.Tensor) else "tensor",
                          theirs[key] if not isinstance(theirs[key], torch.Tensor) else "tensor")
