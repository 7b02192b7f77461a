"""Stage `features`: the test split's evaluator features, extracted once per (dataset, split, evaluator digest).

evaluate, analyze, contrast and separation read outputs/features/real-test.pt instead of pushing the real set
through the evaluator again; the file carries the SHA-256 of the evaluator's weights, and a reader given
another evaluator refuses it (re-run this stage).
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space
from ddmbench.evaluation.features import extract_features, save_real_features
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.io import ensure_writable
from ddmbench.models.checkpoints import load_classifier
from ddmbench.pipeline.paths import Paths


@torch.no_grad()
def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.real_features)
    ds = load_prepared(paths.dataset)
    classifier = load_classifier(paths.model("evaluator"), image_shape=shape_of_images(ds["test_x"]))
    digest = weights_sha256(classifier)
    feats = extract_features(classifier, to_model_space(ds["test_x"][:cfg.evaluate.n_real]))  # (M, d)
    save_real_features(paths.real_features, feats, evaluator_sha256=digest, dataset=cfg.data.dataset, split="test")
    info = {"n_real": len(feats), "num_features": feats.shape[1], "evaluator_sha256": digest,
            "dataset": cfg.data.dataset, "split": "test"}
    console.print(f"real-set features {tuple(feats.shape)} of {cfg.data.dataset}/test, evaluator {digest[:12]} "
                  f"-> {paths.real_features.relative_to(paths.root)}")
    return info
