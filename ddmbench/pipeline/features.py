"""Stage `features`: the test split's evaluator features, extracted once per (dataset, split, evaluator digest),
and its features in each other feature space the profile lists (evaluate.feature_spaces) whose weights are here.

evaluate, analyze, contrast and separation read outputs/features/real-test.pt instead of pushing the real set
through the evaluator again; the file carries the SHA-256 of the evaluator's weights, and a reader given
another evaluator refuses it (re-run this stage). Each other space's features carry the SHA-256 of its weights.
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
from ddmbench.pipeline.feature_spaces import extra_spaces, features_of, load_space
from ddmbench.pipeline.paths import Paths


@torch.no_grad()
def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.real_features)
    ds = load_prepared(paths.dataset)
    classifier = load_classifier(paths.model("evaluator"), image_shape=shape_of_images(ds["test_x"]))
    digest = weights_sha256(classifier)
    real = ds["test_x"][:cfg.evaluate.n_real]                                                   # uint8 (M, C, H, W)
    feats = extract_features(classifier, to_model_space(real))                                   # (M, d)
    spaces = {}
    for space in extra_spaces(cfg, paths):
        space_feats = features_of(load_space(space), real)                                      # (M, d_s)
        spaces[space.name] = {"features": space_feats, **space.record(space_feats.shape[1])}
        console.print(f"real-set {space.name} features {tuple(space_feats.shape)}, weights {space.sha256[:12]}")
    save_real_features(paths.real_features, feats, evaluator_sha256=digest, dataset=cfg.data.dataset, split="test",
                       spaces=spaces)
    info = {"n_real": len(feats), "num_features": feats.shape[1], "evaluator_sha256": digest,
            "dataset": cfg.data.dataset, "split": "test"}
    if spaces:
        info["feature_spaces"] = {name: {k: v for k, v in entry.items() if k != "features"}
                                  for name, entry in spaces.items()}
    console.print(f"real-set features {tuple(feats.shape)} of {cfg.data.dataset}/test, evaluator {digest[:12]} "
                  f"-> {paths.real_features.relative_to(paths.root)}")
    return info
