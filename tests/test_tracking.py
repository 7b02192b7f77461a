"""MLflow mirroring: one run per stage with params, metrics, tags and artefacts; a tracking failure only warns."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import Project

from ddmbench.pipeline import cluster, prepare, train_evaluator
from ddmbench.pipeline.tracking import (
    DIGEST_TAG,
    KIND_TAG,
    config_digest,
    flatten,
    numeric_metrics,
    stage_clock,
    tracking_uri,
)


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
    runs = {r.info.run_name: r for r in _runs(cfg.tracking.uri) if r.data.tags.get(KIND_TAG) == "stage"}
    assert set(runs) == {"prepare", "cluster"}
    run = runs["cluster"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["purity"] == pytest.approx(metrics["purity"])
    assert run.data.params["cluster/k"] == "2" and run.data.params["seed"] == "0"
    assert run.data.tags["stage"] == "cluster"
    assert run.data.tags["mlflow.source.name"] == "ddmbench/pipeline/cluster.py"
    assert run.data.tags["mlflow.runName"] == "cluster" and run.data.tags["mlflow.source.type"] == "LOCAL"

    from mlflow.tracking import MlflowClient

    artifacts = [a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run.info.run_id)]
    assert artifacts == ["cluster.json"]
    # the JSON file is the record; MLflow mirrors it
    assert json.loads(tracked.paths.cluster_metrics.read_text()) == metrics


def test_stage_runs_nest_under_one_parent_per_configuration(tracked: Project) -> None:
    from mlflow.tracking import MlflowClient

    cfg = tracked.config()
    prepare.run(cfg, tracked.paths)
    cluster.run(cfg, tracked.paths)
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    runs = _runs(cfg.tracking.uri)
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags[DIGEST_TAG] == config_digest(cfg)
    assert parent.data.params["cluster/k"] == "2"  # the whole configuration, once
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} == {"prepare", "cluster"}
    # the parent spans its stages
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)

    # another configuration gets its own parent; the tracking section is not part of the configuration
    tracked.update(seed=7)
    other = tracked.config()
    assert config_digest(other) != config_digest(cfg)
    cluster.run(other, tracked.paths)
    parents = [r for r in _runs(cfg.tracking.uri) if r.data.tags.get(KIND_TAG) == "pipeline"]
    assert {r.data.tags[DIGEST_TAG] for r in parents} == {config_digest(cfg), config_digest(other)}
    assert config_digest(other.model_copy(update={"tracking": other.tracking.model_copy(
        update={"experiment": "elsewhere"})})) == config_digest(other)


def test_concurrently_created_parents_converge_on_the_oldest(tracked: Project) -> None:
    from mlflow.tracking import MlflowClient

    cfg = tracked.config()
    client = MlflowClient(cfg.tracking.uri)
    exp_id = client.create_experiment(cfg.tracking.experiment)
    tags = {KIND_TAG: "pipeline", DIGEST_TAG: config_digest(cfg)}
    older = client.create_run(exp_id, start_time=1_000, tags=tags).info.run_id
    client.create_run(exp_id, start_time=2_000, tags=tags)
    prepare.run(cfg, tracked.paths)
    run = next(r for r in _runs(cfg.tracking.uri) if r.info.run_name == "prepare")
    assert run.data.tags["mlflow.parentRunId"] == older


@pytest.mark.slow
def test_run_times_are_those_of_the_stage_work(tracked: Project) -> None:
    cfg = tracked.config()
    with stage_clock():
        began = time.time() * 1000
        time.sleep(1.2)  # stands for the stage's work before it mirrors its results
        prepare.run(cfg, tracked.paths)
    ended = time.time() * 1000
    run = next(r for r in _runs(cfg.tracking.uri) if r.info.run_name == "prepare")
    assert began - 5 <= run.info.start_time <= began + 5
    assert run.info.end_time - run.info.start_time >= 1200
    assert run.info.end_time <= ended + 5


def test_prepared_dataset_is_a_run_input_with_its_digest(tracked: Project) -> None:
    cfg = tracked.config()
    prepare.run(cfg, tracked.paths)
    cluster.run(cfg, tracked.paths)
    digest = hashlib.sha256(tracked.paths.manifest.read_bytes()).hexdigest()[:16]
    for run in (r for r in _runs(cfg.tracking.uri) if r.data.tags.get(KIND_TAG) == "stage"):
        [given] = run.inputs.dataset_inputs
        assert given.dataset.name == "mnist" and given.dataset.digest == digest
        assert json.loads(given.dataset.profile)["n_train"] == 240
        assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "train"


@pytest.mark.slow
def test_training_stage_logs_into_one_run(tracked: Project) -> None:
    cfg = tracked.config()
    prepare.run(cfg, tracked.paths)
    metrics = train_evaluator.run(cfg, tracked.paths)
    runs = [r for r in _runs(cfg.tracking.uri) if r.info.run_name == "train-evaluator"]
    assert len(runs) == 1  # Lightning's logger and the mirror share the run
    assert runs[0].data.tags["mlflow.parentRunId"] and runs[0].data.tags["stage"] == "train-evaluator"
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
