"""A real `mlflow server` on a loopback port: a tiny pipeline logs to it over HTTP and the client reads it back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project
from test_faults import reattach_closed_log_streams
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.data import datasets
from ddmbench.models import nets
from ddmbench.models.checkpoints import save_weights

pytestmark = pytest.mark.slow

EXPERIMENT = "ddmbench-server-test"
WORK_S = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path) -> Iterator[str]:
    """`mlflow server` with a temporary sqlite backend (a copy of the migrated template) and artifact store."""
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template, db)
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(tmp_path / "server" / "artifacts")]
    log = open(tmp_path / "server" / "log.txt", "w")  # noqa: SIM115  (closed in the finalizer)
    server = subprocess.Popen(cmd, cwd=db.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded shared machine starts it slowly
        while True:
            if server.poll() is not None:
                tail = (tmp_path / "server" / "log.txt").read_text()[-2000:]
                pytest.fail(f"mlflow server exited with {server.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 180 s")
            time.sleep(0.3)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and its workers
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def test_pipeline_logs_to_a_real_server(project: Project, mlflow_server: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    project.update(tracking={"enabled": True, "uri": mlflow_server, "experiment": EXPERIMENT}, policies=["monolith"])
    monkeypatch.chdir(project.root)
    # one training stage is enough: the monolith that sample reads is built untrained (no run of its own)
    save_weights(project.paths.model("monolith"), nets.build_velocity_net("unet-xs"), {"kind": "monolith", "net": "unet-xs"})
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})
    load = datasets.load_tensors_of

    def slow_load(*args: object, **kwargs: object) -> object:  # prepare's work takes at least WORK_S
        time.sleep(WORK_S)
        return load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_tensors_of", slow_load)
    for args in (["prepare"], ["train-evaluator"], ["features"], ["sample", "--policy", "monolith"],
                 ["evaluate", "--policy", "monolith"]):
        reattach_closed_log_streams(monkeypatch)
        result = runner.invoke(app, [*args, "--params", "params.yaml"])
        assert result.exit_code == 0, result.output
        assert "warning:" not in result.stderr, result.stderr  # the server took every call

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    everything = client.search_runs([exp.experiment_id])
    [parent] = [r for r in everything if r.data.tags.get("ddmbench.kind") == "pipeline"]
    runs = {r.info.run_name: r for r in everything if r is not parent}
    assert set(runs) == {"prepare", "train-evaluator", "sample@monolith", "evaluate@monolith"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    # one group: every stage of this configuration nested under its parent, found by a tag search
    nested = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in nested} == set(runs)
    assert parent.info.start_time <= min(r.info.start_time for r in runs.values())
    assert parent.info.end_time >= max(r.info.end_time for r in runs.values())
    # real durations: the run covers the stage's work
    assert runs["prepare"].info.end_time - runs["prepare"].info.start_time >= WORK_S * 1000
    for run in runs.values():
        assert run.info.end_time > run.info.start_time
        assert run.data.tags["mlflow.source.name"].startswith("ddmbench/pipeline/")
        assert run.data.tags["mlflow.runName"] == run.info.run_name
        # the prepared dataset, by digest (nothing uploaded)
        [given] = run.inputs.dataset_inputs
        assert given.dataset.digest == hashlib.sha256(project.paths.manifest.read_bytes()).hexdigest()[:16]
    # the chart view compares policies: metric keys never name the policy
    assert not any("monolith" in key for key in runs["evaluate@monolith"].data.metrics)

    # params
    assert runs["train-evaluator"].data.params["evaluator/steps"] == "15"
    assert runs["sample@monolith"].data.params["policy"] == "monolith"
    assert runs["prepare"].data.params["data/dataset"] == "mnist"
    # metrics: Lightning's during training, the mirrored JSON after
    evaluator = json.loads(project.paths.model_metrics("evaluator").read_text())
    assert "train/loss" in runs["train-evaluator"].data.metrics
    assert runs["train-evaluator"].data.metrics["test_acc"] == pytest.approx(evaluator["test_acc"])
    evaluated = json.loads(project.paths.eval_metrics("monolith").read_text())
    assert runs["evaluate@monolith"].data.metrics["fid"] == pytest.approx(evaluated["fid"])
    assert runs["evaluate@monolith"].data.tags["policy"] == "monolith"
    # artifacts went through the server's artifact proxy and come back byte for byte
    run_id = runs["evaluate@monolith"].info.run_id
    # the metrics JSON and the per-sample quality file (evaluator confidence, nearest-real distance)
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["monolith.json", "monolith.pt"]
    assert runs["evaluate@monolith"].data.metrics["fid_ci95/0"] == pytest.approx(evaluated["fid_ci95"][0])
    local = client.download_artifacts(run_id, "monolith.json", str(tmp_path / "download"))
    assert Path(local).read_bytes() == project.paths.eval_metrics("monolith").read_bytes()
    assert [a.path for a in client.list_artifacts(runs["prepare"].info.run_id)] == ["manifest.json"]
