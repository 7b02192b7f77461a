"""The flow-matching recipe shared by `train-expert` (one cluster) and `train-monolith` (all data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config, FlowTrainConfig, config_to_dict
from ddmbench.data.datasets import shape_of_images, to_model_space
from ddmbench.io import ensure_writable, write_json
from ddmbench.models import nets
from ddmbench.models.checkpoints import save_weights
from ddmbench.pipeline.fitting import fit_stage
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling import flow
from ddmbench.train.modules import FlowMatching, ema_callback
from ddmbench.train.trainer import seed_everything, summarise, train_loader

HELDOUT_MAX = 2000


@torch.no_grad()
def heldout_loss(net: torch.nn.Module, images: torch.Tensor, seed: int) -> float:
    """Flow-matching MSE of ``net`` on held-out images (N, C, H, W) with fixed t and noise draws."""
    if len(images) == 0:
        return float("nan")
    g = streams.offset_generator(seed)
    losses = []
    for x0 in images[:HELDOUT_MAX].split(500):
        x_t, t, target = flow.sample_training_pair(x0, generator=g)
        losses.append(((net(x_t, t) - target) ** 2).mean(dim=(1, 2, 3)))
    return float(torch.cat(losses).mean())


def train_flow(cfg: Config, paths: Paths, *, kind: str, run_name: str, section: FlowTrainConfig, steps: int,
               images: torch.Tensor, heldout: torch.Tensor, seed: int, out: Path, metrics_path: Path,
               meta: dict[str, Any]) -> dict[str, Any] | None:
    """Train a velocity net on uint8 images (N, C, H, W); rank zero writes weights and metrics (the metadata
    records the image shape (C, H, W), which sampling takes its noise shape from)."""
    ensure_writable(out, metrics_path)
    seed_everything(seed)
    shape = shape_of_images(images)
    net = nets.build_velocity_net(section.net, shape)
    module = FlowMatching(net, lr=section.lr, weight_decay=section.weight_decay, seed=seed)
    loader = train_loader((to_model_space(images),), section.batch_size, seed, cfg.trainer.world_size, run_name)
    result = fit_stage(module, loader, cfg, paths, max_steps=steps, run_name=run_name, stage=run_name.split("@")[0],
                 callbacks=[ema_callback(section.ema_decay)], section=kind,
                 settings={kind: section.model_dump(mode="json"), "seed": seed})
    if not result.is_global_zero:
        return None
    net.eval()
    metrics = summarise(result, {"steps": steps, "n_train": len(images), "params": sum(p.numel() for p in net.parameters()),
                                 "heldout_loss": heldout_loss(net, to_model_space(heldout), seed)})
    save_weights(out, net, {"kind": kind, "net": section.net, "image_shape": list(shape), "steps": steps, **meta})
    write_json(metrics_path, metrics)
    result.discard_checkpoints()
    mirror(cfg, paths, run_name, run_name.split("@")[0], {kind: section.model_dump(mode="json"), "seed": seed,
           "trainer": config_to_dict(cfg)["trainer"]}, metrics, [metrics_path], run_id=result.run_id)
    return metrics
