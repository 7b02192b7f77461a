"""Mirror already-written results to MLflow. A tracking failure only warns: the JSON files are the record.

One MLflow run per stage (and policy), grouped in one experiment, tagged with the git commit and the
DVC stage. The tracking URI is ``tracking.uri`` from params, else ``$MLFLOW_TRACKING_URI``, else an
explicit ``sqlite:///<repo root>/mlflow.db`` (the file store raises on MLflow >= 3.13).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ddmbench.config import Config, flatten
from ddmbench.console import is_rank_zero
from ddmbench.errors import first_line
from ddmbench.pipeline.paths import Paths

# An unreachable server must fail fast instead of retrying with back-off for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


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


def run_tags(paths: Paths, stage: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(paths.root), "stage": stage,
            "dvc_stage": os.environ.get("DVC_STAGE", "none"), "dvc_exp": os.environ.get("DVC_EXP_NAME", "none")}
    tags.update(extra or {})
    return tags


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


def mirror(cfg: Config, paths: Paths, run_name: str, stage: str, params: Mapping[str, Any],
           metrics: Mapping[str, Any], artifacts: Iterable[Path] = (), run_id: str | None = None,
           tags: Mapping[str, str] | None = None) -> str | None:
    """Log params, numeric metrics, tags and artefact files to an MLflow run (new, or ``run_id``)."""
    uri = tracking_uri(cfg, paths)
    if not cfg.tracking.enabled or uri in _FAILED_URIS:
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        if run_id is None:
            exp = client.get_experiment_by_name(cfg.tracking.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
            run_id = client.create_run(exp_id, run_name=run_name, tags=run_tags(paths, stage, tags)).info.run_id
        else:
            for key, value in run_tags(paths, stage, tags).items():
                client.set_tag(run_id, key, value)
        for key, value in flatten(params).items():
            client.log_param(run_id, key, str(value)[:6000])
        for key, value in numeric_metrics(metrics).items():
            client.log_metric(run_id, key, value)
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as exc:  # tracking must never cost a result
        _give_up(uri, f"MLflow tracking failed for '{run_name}' at {uri} ({first_line(exc)}); "
                      "results are still in the metrics files")
        return None


def lightning_logger(cfg: Config, paths: Paths, run_name: str, stage: str) -> Any:
    """An ``MLFlowLogger`` with an explicit URI whose run exists already, or None (warned) when tracking fails."""
    uri = tracking_uri(cfg, paths)
    if not cfg.tracking.enabled or uri in _FAILED_URIS:
        return None
    try:
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=cfg.tracking.experiment, run_name=run_name,
                              tracking_uri=uri, tags=run_tags(paths, stage))
        if is_rank_zero():
            _ = logger.run_id  # creates the run now, so an unreachable store fails here, not mid-training
        return logger
    except Exception as exc:
        _give_up(uri, f"MLflow tracking unavailable for '{run_name}' at {uri} ({first_line(exc)}); "
                      "training without it, results are still in the metrics files")
        return None
