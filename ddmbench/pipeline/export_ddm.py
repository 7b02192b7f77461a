"""`ddmbench export-ddm DEST`: the trained DDM of this project (experts, router, clusters) in Paris's folder layout,
which `load_ddm` (and so `import-ddm`) reads back: its samples are bit-identical to the pipeline's own."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.ddm.folder import ddmbench_config, export_ddm
from ddmbench.errors import ConfigError
from ddmbench.models import nets
from ddmbench.models.checkpoints import read_checkpoint, router_temperature
from ddmbench.pipeline.artifacts import load_clusters
from ddmbench.pipeline.paths import Paths


def _net(path: Path, kind: str, what: str, build: Any) -> tuple[Any, dict[str, Any], ImageShape]:
    state, meta = read_checkpoint(path, kind, what)
    shape = tuple(meta.get("image_shape", MNIST_SHAPE))
    net = build(meta, shape)
    net.load_state_dict(state)
    return net, meta, shape


def run(cfg: Config, paths: Paths, dest: Path) -> dict[str, Any]:
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; export into a new folder")
    experts = []
    for k in range(cfg.cluster.k):
        net, meta, shape = _net(paths.expert(k), "expert", f"ddmbench train-expert --expert {k}",
                                lambda m, s: nets.build_velocity_net(m["net"], s))
        experts.append((net, ddmbench_config("expert", meta["net"], shape)))
    what = "ddmbench train-router"
    router, meta, _ = _net(paths.model("router"), "router", what,
                           lambda m, s: nets.build_router(m["net"], int(m["num_experts"]), s))
    config = ddmbench_config("router", meta["net"], shape, num_experts=int(meta["num_experts"]),
                             temperature=router_temperature(meta, paths.model("router"), what))
    assignments = load_clusters(paths)["assignments"]
    clusters = {"dataset": cfg.data.dataset, "split": "train", "train_limit": cfg.data.train_limit,
                "indices": [(assignments == k).nonzero().flatten().tolist() for k in range(cfg.cluster.k)]}
    partial = dest.with_name(f".{dest.name}.partial")     # the whole folder appears at once, or nothing
    shutil.rmtree(partial, ignore_errors=True)
    export_ddm(partial, experts, (router, config), shape, clusters, cfg.data.dataset)
    if dest.exists():
        dest.rmdir()
    partial.rename(dest)
    console.print(f"wrote the DDM ({cfg.cluster.k} experts, router, clusters) to {dest}")
    return {"experts": cfg.cluster.k, "folder": str(dest)}
