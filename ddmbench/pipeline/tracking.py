"""Mirror already-written results to MLflow. A tracking failure only warns: the JSON files are the record.

How the runs look in ``mlflow ui`` (MLflow 3):

- The experiment carries ``mlflow.experimentKind = custom_model_development``, MLflow's mark of a
  model-training experiment. (The 3.17 UI lets its GenAI / Model training switch override the tag: the
  switch comes from the URL's ``?workflowType=machine_learning``, then from the browser's memory, and
  starts on GenAI; docs/tracking.md gives the link that opens the runs.)
- **Grouping: one parent run per pipeline configuration**, keyed by the digest of the resolved config
  (without the ``tracking`` section: where results are logged is not what produced them) and the git
  commit. Every stage run is nested under it (``mlflow.parentRunId``), so the runs table shows one
  expandable row per configuration, and ``tags.ddmbench.config_digest`` filters on it. The parent is
  found by a tag search, else created, so every stage of one ``dvc repro`` (one process per stage) joins it,
  and so do later re-runs of stages of the same configuration at the same commit. A parent per
  configuration, rather than per ``dvc repro`` invocation, because DVC skips unchanged stages: a second repro
  after a change runs only the stages it invalidates, and their runs belong with the configuration that the
  results describe, not with a repro that ran two stages. Two stages creating the parent at once converge on
  the oldest one and delete the other.
- Each stage run starts when the stage's work began (``stage_clock()``, opened by the CLI around every
  command and by ``ddmbench run`` around every step) and ends when the stage hands its results over, so durations
  in the UI are those of the work. The parent spans its first stage's start to its latest stage's end.
- Standard tags (``mlflow.source.git.commit``, ``mlflow.source.name`` = the stage's module,
  ``mlflow.source.type``, ``mlflow.runName``, ``mlflow.user``) plus ``stage``/``dvc_stage``/``dvc_exp``;
  params, metrics and tags go in ``log_batch`` calls; the prepared dataset is a run input identified by
  the digest of ``outputs/prepare/manifest.json`` (which holds the SHA-256 of every raw file), not uploaded.
- Metric keys never embed the policy (it is a tag and a param), so the chart view compares policies.

The tracking URI is ``tracking.uri`` from params, else ``$MLFLOW_TRACKING_URI``, else an explicit
``sqlite:///<repo root>/mlflow.db`` (the file store raises on MLflow >= 3.13).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ddmbench.config import Config, config_to_dict, flatten
from ddmbench.console import is_rank_zero
from ddmbench.errors import first_line
from ddmbench.pipeline.paths import Paths

# An unreachable server must fail fast instead of retrying with back-off for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3 UI: open on the runs
DIGEST_TAG = "ddmbench.config_digest"
KIND_TAG = "ddmbench.kind"  # "pipeline" (parent) or "stage"
PARAM_MAX = 6000  # MLflow's limit on a param value

_STAGE_START_MS: ContextVar[int | None] = ContextVar("ddmbench_stage_start_ms", default=None)


def now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def stage_clock() -> Iterator[None]:
    """Mark the start of a stage's work: runs created inside start at this time (the innermost clock wins)."""
    token = _STAGE_START_MS.set(now_ms())
    try:
        yield
    finally:
        _STAGE_START_MS.reset(token)


def stage_start_ms() -> int:
    """When the current stage began (ms since the epoch); now when no ``stage_clock`` is open."""
    return _STAGE_START_MS.get() or now_ms()


def tracking_uri(cfg: Config, paths: Paths) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{paths.mlflow_db.resolve()}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def config_digest(cfg: Config) -> str:
    """SHA-256 (hex) of the resolved config without its ``tracking`` section: the key of a pipeline group."""
    raw = {k: v for k, v in config_to_dict(cfg).items() if k != "tracking"}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def run_tags(paths: Paths, stage: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A stage run's tags: MLflow's standard source tags, the stage and DVC's stage and experiment names."""
    commit = git_commit(paths.root)
    tags = {"mlflow.source.name": f"ddmbench/pipeline/{stage.split('@')[0].replace('-', '_')}.py",
            "mlflow.source.type": "LOCAL", "mlflow.user": _user(), KIND_TAG: "stage", "stage": stage,
            "dvc_stage": os.environ.get("DVC_STAGE", "none"), "dvc_exp": os.environ.get("DVC_EXP_NAME", "none")}
    if commit != "none":
        tags["mlflow.source.git.commit"] = commit
    tags.update(extra or {})
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# Stores that failed in this process: later calls skip them silently, so a command warns once, not per call.
_FAILED_URIS: set[str] = set()


def forget_failures() -> None:
    """Start a new command: try every store again (the CLI calls this per command)."""
    _FAILED_URIS.clear()


def _give_up(uri: str, message: str) -> None:
    _FAILED_URIS.add(uri)
    warn(message)


def _experiment_id(client: Any, name: str) -> str:
    """The experiment's id (created if missing), tagged so that the MLflow 3 UI opens it on its runs."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, tags=EXPERIMENT_TAGS)
        except MlflowException:  # another stage created it in between
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
        else:
            return exp_id
    for key, value in EXPERIMENT_TAGS.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _pipeline_runs(client: Any, exp_id: str, digest: str, commit: str) -> list[Any]:
    """Parent runs of this configuration and commit, oldest first."""
    query = f"tags.`{KIND_TAG}` = 'pipeline' and tags.`{DIGEST_TAG}` = '{digest}'"
    runs = [r for r in client.search_runs([exp_id], filter_string=query, max_results=100)
            if r.data.tags.get("mlflow.source.git.commit", "none") == commit]
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def _batch(client: Any, run_id: str, params: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> None:
    """Log params, metrics and tags in batches (MlflowClient.log_batch splits them under MLflow's limits)."""
    from mlflow.entities import Metric, Param, RunTag

    ts = now_ms()
    client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in (metrics or {}).items()],
                     params=[Param(k, str(v)[:PARAM_MAX]) for k, v in (params or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def _parent_run(client: Any, exp_id: str, cfg: Config, commit: str) -> str:
    """The id of this configuration's parent run: found by its tags, else created (and its config logged)."""
    digest = config_digest(cfg)
    found = _pipeline_runs(client, exp_id, digest, commit)
    if found:
        return found[0].info.run_id
    tags = {KIND_TAG: "pipeline", DIGEST_TAG: digest, "mlflow.source.name": "dvc.yaml",
            "mlflow.source.type": "LOCAL", "mlflow.user": _user(),
            "mlflow.note.content": f"All stage runs of one configuration (config digest {digest[:12]}, "
                                   f"commit {commit[:12]}); each stage run is nested under this one."}
    if commit != "none":
        tags["mlflow.source.git.commit"] = commit
    name = f"pipeline {digest[:8]}" + (f" @ {commit[:7]}" if commit != "none" else "")
    run_id = client.create_run(exp_id, start_time=stage_start_ms(), tags=tags, run_name=name).info.run_id
    raw = {k: v for k, v in config_to_dict(cfg).items() if k != "tracking"}
    _batch(client, run_id, params=flatten(raw))
    oldest = _pipeline_runs(client, exp_id, digest, commit)[0].info.run_id
    if oldest != run_id:  # a concurrent stage created one first: join it
        client.delete_run(run_id)
    return oldest


def _dataset_input(paths: Paths, stage: str) -> Any | None:
    """The prepared dataset as an MLflow run input (digest of its manifest; nothing uploaded), or None."""
    if not paths.manifest.is_file():
        return None
    from mlflow.entities import Dataset, DatasetInput, InputTag

    raw = paths.manifest.read_bytes()
    manifest = json.loads(raw)
    profile = {k: manifest.get(k) for k in ("n_train", "n_test", "image_shape", "source")}
    dataset = Dataset(name=str(manifest.get("dataset", "dataset")), digest=hashlib.sha256(raw).hexdigest()[:16],
                      source_type="local", source=json.dumps({"uri": str(paths.manifest.resolve())}),
                      profile=json.dumps(profile))
    context = "train" if stage.split("@")[0] in ("prepare", "cluster", "import-ddm", "train-evaluator", "train-router",
                                                 "train-expert", "train-monolith") else "eval"
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def start_stage_run(client: Any, cfg: Config, paths: Paths, run_name: str, stage: str,
                    tags: Mapping[str, str] | None = None) -> str:
    """Create a stage's run under its configuration's parent, starting when the stage began; its id."""
    exp_id = _experiment_id(client, cfg.tracking.experiment)
    all_tags = run_tags(paths, stage, tags)
    all_tags[DIGEST_TAG] = config_digest(cfg)
    all_tags["mlflow.parentRunId"] = _parent_run(client, exp_id, cfg, all_tags.get("mlflow.source.git.commit", "none"))
    run = client.create_run(exp_id, start_time=stage_start_ms(), tags=all_tags, run_name=run_name)
    dataset = _dataset_input(paths, stage)
    if dataset is not None:
        client.log_inputs(run.info.run_id, datasets=[dataset])
    return run.info.run_id


def _finish(client: Any, run_id: str, end: int) -> None:
    """End the run at ``end`` (ms) and stretch its parent's end time to cover it."""
    client.set_terminated(run_id, "FINISHED", end_time=end)
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    if parent:
        info = client.get_run(parent).info
        client.set_terminated(parent, "FINISHED", end_time=max(end, info.end_time or 0))


def mirror(cfg: Config, paths: Paths, run_name: str, stage: str, params: Mapping[str, Any],
           metrics: Mapping[str, Any], artifacts: Iterable[Path | tuple[Path, str]] = (),
           run_id: str | None = None, tags: Mapping[str, str] | None = None,
           text: Mapping[str, str] | None = None) -> str | None:
    """Log params, numeric metrics, tags, artefact files (a path, or (path, artifact folder)) and ``text``
    ({artifact file: content}) to a stage run (new, or ``run_id`` made by ``lightning_logger``), ending it
    at this call (the stage's work is done; MLflow's own overhead is not the stage's); the run's id, or None."""
    end = now_ms()
    uri = tracking_uri(cfg, paths)
    if not cfg.tracking.enabled or uri in _FAILED_URIS:
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        extra: Mapping[str, str] = {}
        if run_id is None:
            run_id = start_stage_run(client, cfg, paths, run_name, stage, tags)
        else:
            extra = run_tags(paths, stage, tags)
        _batch(client, run_id, params=flatten(params), metrics=numeric_metrics(metrics), tags=extra)
        for item in artifacts:
            path, folder = item if isinstance(item, tuple) else (item, None)
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), folder)
        for name, content in (text or {}).items():
            client.log_text(run_id, content, name)
        _finish(client, run_id, end)
        return run_id
    except Exception as exc:  # tracking must never cost a result
        _give_up(uri, f"MLflow tracking failed for '{run_name}' at {uri} ({first_line(exc)}); "
                      "results are still in the metrics files")
        return None


def lightning_logger(cfg: Config, paths: Paths, run_name: str, stage: str) -> Any:
    """An ``MLFlowLogger`` attached to this stage's run (created now under its parent, starting when the stage
    began), or None (warned) when tracking fails. Ranks other than zero get a logger without a run."""
    uri = tracking_uri(cfg, paths)
    if not cfg.tracking.enabled or uri in _FAILED_URIS:
        return None
    try:
        from lightning.pytorch.loggers import MLFlowLogger
        from mlflow.tracking import MlflowClient

        if not is_rank_zero():
            return MLFlowLogger(experiment_name=cfg.tracking.experiment, run_name=run_name, tracking_uri=uri)
        # the run exists before training, so an unreachable store fails here, not mid-training
        run_id = start_stage_run(MlflowClient(uri), cfg, paths, run_name, stage)
        return MLFlowLogger(experiment_name=cfg.tracking.experiment, run_name=run_name, tracking_uri=uri,
                            run_id=run_id)
    except Exception as exc:
        _give_up(uri, f"MLflow tracking unavailable for '{run_name}' at {uri} ({first_line(exc)}); "
                      "training without it, results are still in the metrics files")
        return None
