"""Stage `train-expert`: one flow-matching expert on one cluster (EMA weights saved for sampling)."""

from __future__ import annotations

from typing import Any

from ddmbench.config import Config
from ddmbench.data.datasets import load_prepared
from ddmbench.errors import ConfigError
from ddmbench.pipeline.artifacts import load_clusters
from ddmbench.pipeline.flow_training import train_flow
from ddmbench.pipeline.paths import Paths
from ddmbench.train.trainer import seed_for


def run(cfg: Config, paths: Paths, k: int) -> dict[str, Any] | None:
    if k not in cfg.experts:
        raise ConfigError(f"expert {k} is not in params.yaml experts {cfg.experts}; choose one of them")
    ds = load_prepared(paths.dataset)
    clusters = load_clusters(paths, ds)
    if int(clusters["centroids"].shape[0]) != cfg.cluster.k:
        raise ConfigError(f"outputs/cluster has {clusters['centroids'].shape[0]} clusters but cluster.k={cfg.cluster.k}; "
                          "re-run `ddmbench cluster`")
    images = ds["train_x"][clusters["assignments"] == k]
    heldout = ds["test_x"][clusters["test_assignments"] == k]
    return train_flow(cfg, paths, kind="expert", run_name=f"train-expert@{k}", section=cfg.expert, steps=cfg.expert.steps,
                      images=images, heldout=heldout, seed=seed_for(cfg, 10 + k), out=paths.expert(k),
                      metrics_path=paths.expert_metrics(k), meta={"k": k, "num_experts": cfg.cluster.k})
