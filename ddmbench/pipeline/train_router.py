"""Stage `train-router`: cross-entropy on noisy (x_t, t) -> cluster of x_0."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space
from ddmbench.io import ensure_writable, write_json
from ddmbench.models import nets
from ddmbench.models.checkpoints import save_weights
from ddmbench.pipeline.artifacts import load_clusters
from ddmbench.pipeline.fitting import fit_stage
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.router_temperature import fit_router_temperature
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling import flow
from ddmbench.train.modules import RouterTraining
from ddmbench.train.trainer import seed_everything, seed_for, summarise, train_loader

T_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@torch.no_grad()
def accuracy_by_t(router: torch.nn.Module, images: torch.Tensor, clusters: torch.Tensor, seed: int
                  ) -> dict[str, float]:
    """Held-out routing accuracy at fixed t: images (N, C, H, W) in model space, clusters (N,)."""
    g = streams.offset_generator(seed)
    out = {}
    for t_val in T_GRID:
        correct = 0
        for x0, c in zip(images.split(1000), clusters.split(1000)):
            eps = torch.randn(x0.shape, generator=g)
            t = torch.full((len(x0),), t_val)
            correct += int((router(flow.interpolate(x0, eps, t), t).argmax(1) == c).sum())
        out[f"acc_t{t_val:g}"] = correct / max(1, len(images))
    return out


def run(cfg: Config, paths: Paths) -> dict[str, Any] | None:
    ensure_writable(paths.model("router"), paths.model_metrics("router"))
    ds = load_prepared(paths.dataset)
    clusters = load_clusters(paths, ds)
    seed = seed_for(cfg, 1)
    seed_everything(seed)
    k = cfg.cluster.k
    shape = shape_of_images(ds["train_x"])
    net = nets.build_router(cfg.router.net, k, shape)
    module = RouterTraining(net, lr=cfg.router.lr, weight_decay=cfg.router.weight_decay, seed=seed)
    loader = train_loader((to_model_space(ds["train_x"]), clusters["assignments"]), cfg.router.batch_size, seed,
                          cfg.trainer.world_size, "train-router")
    result = fit_stage(module, loader, cfg, paths, max_steps=cfg.router.steps, run_name="train-router", stage="train-router",
                 section="router", settings={"router": cfg.router.model_dump(mode="json"), "seed": seed, "k": k})
    if not result.is_global_zero:
        return None
    net.eval()
    heldout = accuracy_by_t(net, to_model_space(ds["test_x"][:2000]), clusters["test_assignments"][:2000], seed)
    metrics = summarise(result, {"steps": cfg.router.steps, "heldout": heldout})
    meta = {"kind": "router", "net": cfg.router.net, "num_experts": k, "image_shape": list(shape)}
    if cfg.router.calibrate:  # temperature scaling on held-out noised test images; load_router applies it
        meta["temperature"], fit_n = fit_router_temperature(cfg, net, to_model_space(ds["test_x"]),
                                                            clusters["test_assignments"])
        metrics["temperature"] = {"value": meta["temperature"], "fit_n": fit_n}
    save_weights(paths.model("router"), net, meta)
    write_json(paths.model_metrics("router"), metrics)
    result.discard_checkpoints()
    mirror(cfg, paths, "train-router", "train-router", {"router": config_to_dict(cfg)["router"], "seed": seed},
           metrics, [paths.model_metrics("router")], run_id=result.run_id)
    return metrics
