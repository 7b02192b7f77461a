"""Stage `expert-accuracy`: every expert's velocity error on noised held-out images, grouped by the router and by
the exact cluster posterior p* of the training set."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench import streams
from ddmbench.analysis.expert_accuracy import expert_accuracy
from ddmbench.config import Config, config_to_dict
from ddmbench.console import progress
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space
from ddmbench.errors import NoClusters
from ddmbench.io import ensure_writable, write_json
from ddmbench.pipeline.artifacts import load_clusters, skipped
from ddmbench.pipeline.fields import build_field
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import empirical_posterior
from ddmbench.pipeline.tracking import mirror


@torch.no_grad()
def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.expert_accuracy)
    ds = load_prepared(paths.dataset)
    try:
        clusters = load_clusters(paths, ds)  # test images' clusters: nearest centroid in the saved PCA space
    except NoClusters as exc:
        return skipped(cfg, paths, paths.expert_accuracy, "expert-accuracy", str(exc))
    n = min(cfg.analysis.accuracy_n, len(ds["test_x"]))
    pick = torch.randperm(len(ds["test_x"]), generator=streams.expert_accuracy_subset(cfg.seed))[:n]
    field = build_field(cfg, paths, cfg.policy("full"), torch.device("cpu"),  # checked experts + router
                        image_shape=shape_of_images(ds["test_x"]))
    post = empirical_posterior(cfg, paths)
    with progress("expert-accuracy t", len(cfg.analysis.accuracy_t)) as advance:
        data = expert_accuracy(field.experts, field.router, to_model_space(ds["test_x"][pick]),
                               clusters["test_assignments"][pick], cfg.analysis.accuracy_t, seed=cfg.seed,
                               posterior=lambda x, t: post(x, t).log_p.exp(), progress=advance)
    data["seed"] = cfg.seed
    write_json(paths.expert_accuracy, data)
    flat = {f"t{row['t']:g}/{key}": value for row in data["rows"] for key, value in row.items() if key != "t"}
    mirror(cfg, paths, "expert-accuracy", "expert-accuracy",
           {"analysis": config_to_dict(cfg)["analysis"], "seed": cfg.seed}, {"n": data["n"], **flat},
           [paths.expert_accuracy])
    return data
