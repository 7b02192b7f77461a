"""MLflow mirroring: one run per stage with params, metrics, tags and artefacts; a tracking failure only warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Project

from ddmbench.pipeline import cluster, prepare, train_evaluator
from ddmbench.pipeline.tracking import flatten, numeric_metrics, tracking_uri


@pytest.fixture
def tracked(project: Project, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(project.root)  # MLflow puts artefacts under ./mlruns of the cwd
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project.update(tracking={"enabled": True, "uri": tracking_uri})
    return project


def _runs(uri: str, experiment: str = "ddmbench-tests") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id])


def test_tracking_uri_precedence(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = project.config()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(cfg, project.paths) == f"sqlite:///{(project.root / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env.db")
    assert tracking_uri(cfg, project.paths) == "sqlite:////env.db"
    project.update(tracking={"uri": "sqlite:////params.db"})
    assert tracking_uri(project.config(), project.paths) == "sqlite:////params.db"


def test_flatten_and_numeric_metrics() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}
    # lists of numbers or mappings are scalars too (interval bounds, per-quantile rows); lists of strings are not
    assert flatten({"ci": [1.0, 2.0], "q": [{"fid": 3.0}], "p": ["a", "b"], "none": []}) == {
        "ci/0": 1.0, "ci/1": 2.0, "q/0/fid": 3.0, "p": ["a", "b"], "none": []}
    assert numeric_metrics({"x": 1, "ok": True, "s": "no", "n": float("nan"), "d": {"y": 2.5}}) == {"x": 1.0, "d/y": 2.5}


def test_stage_mirrors_params_metrics_tags_and_artifacts(tracked: Project) -> None:
    cfg = tracked.config()
    prepare.run(cfg, tracked.paths)
    metrics = cluster.run(cfg, tracked.paths)
    runs = {r.info.run_name: r for r in _runs(cfg.tracking.uri)}
    assert set(runs) == {"prepare", "cluster"}
    run = runs["cluster"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["purity"] == pytest.approx(metrics["purity"])
    assert run.data.params["cluster/k"] == "2" and run.data.params["seed"] == "0"
    assert run.data.tags["stage"] == "cluster" and "git_commit" in run.data.tags
    assert runs["prepare"].data.metrics["n_train"] == 240

    from mlflow.tracking import MlflowClient

    artifacts = [a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run.info.run_id)]
    assert artifacts == ["cluster.json"]
    # the JSON file is the record; MLflow mirrors it
    assert json.loads(tracked.paths.cluster_metrics.read_text()) == metrics


@pytest.mark.slow
def test_training_stage_logs_into_one_run(tracked: Project) -> None:
    cfg = tracked.config()
    prepare.run(cfg, tracked.paths)
    metrics = train_evaluator.run(cfg, tracked.paths)
    runs = [r for r in _runs(cfg.tracking.uri) if r.info.run_name == "train-evaluator"]
    assert len(runs) == 1  # Lightning's logger and the mirror share the run
    data = runs[0].data
    assert "train/loss" in data.metrics  # logged by Lightning during fit
    assert data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])  # mirrored after fit
    assert data.params["evaluator/steps"] == "15"
    assert runs[0].info.status == "FINISHED"


def test_tracking_failure_only_warns(project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    project.update(tracking={"enabled": True, "uri": f"sqlite:///{blocker}/mlflow.db"})
    cfg = project.config()
    manifest = prepare.run(cfg, project.paths)
    assert manifest["n_train"] == 240 and project.paths.manifest.exists() and project.paths.dataset.exists()
    err = capsys.readouterr().err
    assert "warning: MLflow tracking failed for 'prepare'" in err
    assert "results are still in the metrics files" in err


def test_disabled_tracking_creates_no_store(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    cfg = project.config()
    prepare.run(cfg, project.paths)
    cluster.run(cfg, project.paths)
    assert not (project.root / "mlflow.db").exists() and not (project.root / "mlruns").exists()
