"""Stage `train-monolith`: the dense baseline, one velocity net on all data with the experts' total budget."""

from __future__ import annotations

from typing import Any

from ddmbench.config import Config
from ddmbench.data.datasets import load_prepared
from ddmbench.pipeline.flow_training import train_flow
from ddmbench.pipeline.paths import Paths
from ddmbench.train.trainer import seed_for


def run(cfg: Config, paths: Paths) -> dict[str, Any] | None:
    ds = load_prepared(paths.dataset)
    return train_flow(cfg, paths, kind="monolith", run_name="train-monolith", section=cfg.monolith,
                      steps=cfg.monolith_steps, images=ds["train_x"], heldout=ds["test_x"], seed=seed_for(cfg, 2),
                      out=paths.model("monolith"), metrics_path=paths.model_metrics("monolith"), meta={})
