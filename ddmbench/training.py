"""Build a Lightning ``Trainer`` from config and fit a module on in-memory tensors.

DDP: with ``trainer.devices x trainer.num_nodes > 1`` the strategy is ``ddp`` (gloo on CPU, NCCL on
GPU). ``batch_size`` is per device, so the global batch is batch_size x devices x nodes; the learning
rate is not rescaled. Every rank gets the same seed (identical initial weights); Lightning's
``DistributedSampler`` gives each rank its own shard of every epoch.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddmbench.config import Config
from ddmbench.errors import ConfigError, TrainingError, first_line
from ddmbench.paths import Paths
from ddmbench.tracking import lightning_logger


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


@dataclass
class FitResult:
    is_global_zero: bool
    run_id: str | None
    metrics: dict[str, float]
    world_size: int


def train_loader(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, world_size: int = 1,
                 what: str = "training") -> DataLoader:
    """Shuffled batches from tensors held in memory (no per-item decoding).

    The batch is capped at each rank's share of the data so that every rank gets at least one batch."""
    n = len(tensors[0])
    if n < world_size:
        raise TrainingError(f"{what}: only {n} training images for {world_size} processes; "
                            "lower trainer.devices or give this model more data")
    batch_size = min(batch_size, n // world_size)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True, drop_last=True, generator=gen)


def fit(module: L.LightningModule, loader: DataLoader, cfg: Config, paths: Paths, *, max_steps: int,
        run_name: str, stage: str, callbacks: list[L.Callback] | None = None) -> FitResult:
    """Fit ``module`` for ``max_steps`` optimizer steps; returns final logged metrics (rank zero's view)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    tc = cfg.trainer
    logger = lightning_logger(cfg, paths, run_name, stage)
    try:
        trainer = L.Trainer(
            accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
            strategy="ddp" if tc.world_size > 1 else "auto", precision=tc.precision,
            max_steps=max_steps, max_epochs=-1, logger=logger if logger is not None else False,
            callbacks=callbacks or [], enable_checkpointing=False, enable_model_summary=False,
            log_every_n_steps=min(tc.log_every_n_steps, max_steps), default_root_dir=str(paths.lightning_dir),
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        raise ConfigError(f"params.yaml: trainer settings cannot run here ({first_line(exc)}); "
                          "fix trainer.accelerator / devices / precision") from exc
    try:
        trainer.fit(module, train_dataloaders=loader)
    except TrainingError:
        raise
    except RuntimeError as exc:
        raise TrainingError(f"{run_name}: training failed: {first_line(exc)}") from exc
    if trainer.global_step < max_steps:
        raise TrainingError(f"{run_name}: training stopped after {trainer.global_step} of {max_steps} steps "
                            "(no training batches?); nothing was saved")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    run_id = getattr(logger, "run_id", None) if (logger is not None and trainer.is_global_zero) else None
    return FitResult(trainer.is_global_zero, run_id, metrics, trainer.world_size)


def seed_for(cfg: Config, offset: int) -> int:
    """A distinct, reproducible seed per trained model (offset: 0 evaluator, 1 router, 2 monolith, 10+k expert k)."""
    return cfg.seed * 1000 + offset


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def summarise(result: FitResult, extra: dict[str, Any]) -> dict[str, Any]:
    return {**{k.replace("/", "_"): v for k, v in result.metrics.items()}, **extra, "world_size": result.world_size}
