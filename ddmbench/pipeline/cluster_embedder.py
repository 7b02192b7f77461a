"""The clustering embedding of ``cluster.features: embedder``: a classifier trained inside the `cluster` stage
for the partition alone, so that the experts' clusters and the FID/KID feature space come from two networks.

It differs from the evaluator in preset (``cluster.embedder.net``, classifier-xs by default) and in seed: it
trains from the experiment seed (``streams.MODEL_OFFSETS['embedder']``), so a replicate with another `seed`
redraws the whole DDM including its clustering, while every replicate scores with the one evaluator of
``evaluator.seed``. Like DINOv2 in McAllister et al. it is a network other than the model being evaluated;
unlike DINOv2 it is supervised (trained on the training split's class labels, which the DDM never sees
otherwise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config
from ddmbench.data.datasets import dataset_spec, shape_of_images, to_model_space
from ddmbench.evaluation.features import classification_accuracy
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.models import nets
from ddmbench.pipeline.fitting import fit_stage
from ddmbench.pipeline.paths import Paths
from ddmbench.train.modules import ClassifierTraining
from ddmbench.train.trainer import seed_everything, seed_for, train_loader


@dataclass(frozen=True)
class Embedder:
    net: nets.Classifier          # eval mode; ``features`` maps (B, C, H, W) in [-1, 1] to (B, num_features)
    metrics: dict[str, Any]       # embedder_* keys for metrics/cluster.json


def train_embedder(cfg: Config, paths: Paths, ds: dict[str, torch.Tensor]) -> Embedder:
    """Train the clustering classifier on ``ds``'s training split (uint8 images, labels) in one process.

    One process even under a DDP ``trainer``: `cluster` is not a launched stage, and the net is small."""
    ec = cfg.cluster.embedder
    seed = seed_for(cfg, streams.MODEL_OFFSETS["embedder"])
    seed_everything(seed)
    single = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"devices": 1, "num_nodes": 1})})
    shape = shape_of_images(ds["train_x"])
    net = nets.build_classifier(ec.net, num_classes=len(dataset_spec(cfg.data.dataset).classes), image_shape=shape)
    module = ClassifierTraining(net, lr=ec.lr, weight_decay=0.0, seed=seed)
    loader = train_loader((to_model_space(ds["train_x"]), ds["train_y"]), ec.batch_size, seed, 1, "cluster embedder")
    fit_stage(module, loader, single, paths, max_steps=ec.steps, run_name="cluster-embedder", stage="cluster",
              section="cluster.embedder", settings={"embedder": ec.model_dump(mode="json"), "seed": seed}
              ).discard_checkpoints()
    net.eval()
    return Embedder(net, {"embedder_net": ec.net, "embedder_steps": ec.steps, "embedder_seed": seed,
                          "embedder_test_acc": classification_accuracy(net, to_model_space(ds["test_x"]), ds["test_y"]),
                          "embedder_sha256": weights_sha256(net)})
