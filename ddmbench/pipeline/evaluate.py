"""Stage `evaluate`: quality of one policy's samples against the test split, in evaluator feature space.

FID/KID with 95% bootstrap intervals over the generated set, k-NN precision/recall, confidence and class
entropy; per-sample confidence and distance to the nearest real feature go to outputs/quality/<label>.pt.
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import check_sample_images, load_prepared, shape_of_images, to_model_space
from ddmbench.evaluation.metrics import (
    class_probabilities,
    classifier_stats,
    extract_features,
    fid,
    kid,
    nearest_distance,
    precision_recall,
    quality_intervals,
)
from ddmbench.io import ensure_writable, load_tensors, read_json, save_tensors, write_json
from ddmbench.models.checkpoints import load_classifier
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling.policies import PolicySpec

PR_STREAM = 0x9E11  # offsets the real-subset draw of precision/recall from the other uses of cfg.seed


@torch.no_grad()
def run(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    ensure_writable(paths.eval_metrics(spec.label), paths.quality(spec.label))
    what = f"ddmbench sample --policy {spec.label}"
    samples = load_tensors(paths.samples(spec.label), what)
    ds = load_prepared(paths.dataset)
    shape = shape_of_images(ds["test_x"])
    check_sample_images(samples, paths.samples(spec.label), what, shape)
    fake = to_model_space(samples["images"])
    real = to_model_space(ds["test_x"][:cfg.evaluate.n_real])
    classifier = load_classifier(paths.model("evaluator"), image_shape=shape)
    real_feats, fake_feats = extract_features(classifier, real), extract_features(classifier, fake)
    kid_mean, kid_std = kid(real_feats, fake_feats, subset_size=cfg.evaluate.kid_subset_size,
                            subsets=cfg.evaluate.kid_subsets, seed=cfg.seed)
    # The floor of FID at this N: as many real training images, scored exactly like the samples.
    g = torch.Generator().manual_seed(cfg.seed)
    reference = to_model_space(ds["train_x"][torch.randperm(len(ds["train_x"]), generator=g)[:len(fake)]])
    # Precision/recall compare manifolds of equal size: a seeded subset of the real set, as many as the samples.
    g_pr = torch.Generator().manual_seed(cfg.seed + PR_STREAM)
    real_subset = real_feats[torch.randperm(len(real_feats), generator=g_pr)[:len(fake)]]
    precision, recall = precision_recall(real_subset, fake_feats, k=cfg.evaluate.pr_k)
    probs = class_probabilities(classifier, fake)
    metrics = {
        "policy": spec.label, "n_fake": len(fake), "n_real": len(real),
        "fid": fid(real_feats, fake_feats), "kid": kid_mean, "kid_std": kid_std,
        **quality_intervals(real_feats, fake_feats, resamples=cfg.evaluate.bootstrap, seed=cfg.seed),
        "precision": precision, "recall": recall, "pr_k": cfg.evaluate.pr_k, "pr_n_real": len(real_subset),
        "fid_reference_train": fid(real_feats, extract_features(classifier, reference)),
        **classifier_stats(classifier, fake, probs=probs),
    }
    cost = read_json(paths.sample_metrics(spec.label), what)
    cost_keys = ("expert_evals_per_image", "router_evals_per_image", "gflops_per_image", "nfe_per_sample",
                 "wall_time_s", "images_per_s")
    metrics["cost"] = {k: cost[k] for k in cost_keys}
    save_tensors(paths.quality(spec.label), {
        "confidence": probs.max(1).values,                          # (N,) evaluator max-softmax
        "nn_distance": nearest_distance(fake_feats, real_feats),    # (N,) to the nearest real feature
        "seeds": samples["seeds"].long(),                           # (N,) the sample's seed
        "features": fake_feats.float(),                             # (N, d) evaluator features (paired contrasts)
    })
    write_json(paths.eval_metrics(spec.label), metrics)
    mirror(cfg, paths, f"evaluate@{spec.label}", "evaluate", {"evaluate": config_to_dict(cfg)["evaluate"],
           "policy": spec.label}, metrics, [paths.eval_metrics(spec.label), paths.quality(spec.label)],
           tags={"policy": spec.label})
    return metrics
