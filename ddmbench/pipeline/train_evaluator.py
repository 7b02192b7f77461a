"""Stage `train-evaluator`: a digit classifier whose penultimate layer is the FID/KID feature extractor.

Trained from its own ``evaluator.seed`` (not the experiment ``seed``), so runs that differ only in ``seed``
score in the same feature space; the SHA-256 of its weights identifies that space in every quality file."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import dataset_spec, load_prepared, shape_of_images, to_model_space
from ddmbench.evaluation.features import classification_accuracy
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.io import ensure_writable, write_json
from ddmbench.models import nets
from ddmbench.models.checkpoints import save_weights
from ddmbench.pipeline.fitting import fit_stage
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.train.modules import ClassifierTraining
from ddmbench.train.trainer import seed_everything, summarise, train_loader


def run(cfg: Config, paths: Paths) -> dict[str, Any] | None:
    ensure_writable(paths.model("evaluator"), paths.model_metrics("evaluator"))
    ds = load_prepared(paths.dataset)
    seed = cfg.evaluator.seed
    seed_everything(seed)
    num_classes = len(dataset_spec(cfg.data.dataset).classes)
    shape = shape_of_images(ds["train_x"])
    net = nets.build_classifier(cfg.evaluator.net, num_classes=num_classes, image_shape=shape)
    module = ClassifierTraining(net, lr=cfg.evaluator.lr, weight_decay=cfg.evaluator.weight_decay, seed=seed)
    loader = train_loader((to_model_space(ds["train_x"]), ds["train_y"]), cfg.evaluator.batch_size, seed,
                          cfg.trainer.world_size, "train-evaluator")
    result = fit_stage(module, loader, cfg, paths, max_steps=cfg.evaluator.steps, run_name="train-evaluator",
                 stage="train-evaluator", section="evaluator",
                 settings={"evaluator": cfg.evaluator.model_dump(mode="json"), "seed": seed})
    if not result.is_global_zero:
        return None
    net.eval()
    g = streams.offset_generator(seed)
    calibration = to_model_space(ds["train_x"][torch.randperm(len(ds["train_x"]), generator=g)[:5000]])
    feature_scale = net.calibrate_feature_scale(calibration)
    metrics = summarise(result, {"steps": cfg.evaluator.steps, "feature_scale": feature_scale,
                                 "test_acc": classification_accuracy(net, to_model_space(ds["test_x"]), ds["test_y"]),
                                 "num_features": net.num_features, "evaluator_sha256": weights_sha256(net)})
    save_weights(paths.model("evaluator"), net, {"kind": "evaluator", "net": cfg.evaluator.net, "num_classes": num_classes,
                                                   "image_shape": list(shape),
                                                   "sha256": metrics["evaluator_sha256"]})
    write_json(paths.model_metrics("evaluator"), metrics)
    result.discard_checkpoints()
    mirror(cfg, paths, "train-evaluator", "train-evaluator", {"evaluator": config_to_dict(cfg)["evaluator"], "seed": seed},
           metrics, [paths.model_metrics("evaluator")], run_id=result.run_id,
           tags={"evaluator_sha256": metrics["evaluator_sha256"]})
    return metrics
