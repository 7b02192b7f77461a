"""A training stage's fit: the library's resumable ``fit`` with this run's resume folder and MLflow logger."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ddmbench.config import Config
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import lightning_logger
from ddmbench.train.trainer import FitResult, fit


def fit_stage(module: L.LightningModule, loader: DataLoader, cfg: Config, paths: Paths, *, max_steps: int,
              run_name: str, stage: str, callbacks: list[L.Callback] | None = None, section: str | None = None,
              settings: Mapping[str, Any] | None = None) -> FitResult:
    """Fit for ``max_steps`` steps, resuming from ``outputs/resume/<run_name>``, logging to MLflow as ``stage``."""
    return fit(module, loader, cfg, max_steps=max_steps, run_name=run_name, resume_dir=paths.resume(run_name),
               root_dir=paths.lightning_dir, logger=lightning_logger(cfg, paths, run_name, stage),
               callbacks=callbacks, section=section, settings=settings)
