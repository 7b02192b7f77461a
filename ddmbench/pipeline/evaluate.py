"""Stage `evaluate`: quality of one policy's samples against the test split, in evaluator feature space.

FID (plug-in at N, and FID_inf) and KID (unbiased) with 95% jackknife intervals whose estimands are named in
the metrics (ddmbench/evaluation/intervals.py), k-NN precision/recall, confidence and class entropy. The real
features come from the `features` stage; the evaluator's SHA-256 is recorded with every number. Per-sample
confidence, distance to the nearest real feature and the features themselves go to outputs/quality/<label>.pt.
Each other feature space the profile lists (evaluate.feature_spaces: inception, dinov2) adds its Fréchet
distance with the same intervals, named by the space (fid_inception, fd_dinov2; docs/feature-spaces.md).
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import check_sample_images, load_prepared, shape_of_images, to_model_space
from ddmbench.errors import ConfigError
from ddmbench.evaluation.features import (
    class_probabilities,
    classifier_stats,
    extract_features,
    load_real_features,
    load_space_features,
)
from ddmbench.evaluation.fid import RealGaussians, fid
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.evaluation.intervals import RealSet, frechet_intervals, quality_intervals
from ddmbench.evaluation.kid import kid_subsets
from ddmbench.evaluation.precision_recall import nearest_distance, precision_recall
from ddmbench.io import ensure_writable, load_tensors, read_json, save_tensors, write_json
from ddmbench.models.checkpoints import load_classifier
from ddmbench.pipeline.feature_spaces import extra_spaces, features_of, load_space
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling.policies import PolicySpec


@torch.no_grad()
def run(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    ensure_writable(paths.eval_metrics(spec.label), paths.quality(spec.label))
    what = f"ddmbench sample --policy {spec.label}"
    samples = load_tensors(paths.samples(spec.label), what)
    ds = load_prepared(paths.dataset)
    shape = shape_of_images(ds["test_x"])
    check_sample_images(samples, paths.samples(spec.label), what, shape)
    fake = to_model_space(samples["images"])
    classifier = load_classifier(paths.model("evaluator"), image_shape=shape)
    real_feats, digest = load_real_features(paths.real_features, evaluator_sha256=weights_sha256(classifier),
                                            dataset=cfg.data.dataset)
    if len(real_feats) < cfg.evaluate.groups:
        raise ConfigError(f"params.yaml: evaluate.groups={cfg.evaluate.groups} exceeds the {len(real_feats)} real "
                          "test images; use fewer jackknife groups")
    fake_feats = extract_features(classifier, fake)
    kid_mean, kid_std = kid_subsets(real_feats, fake_feats, subset_size=cfg.evaluate.kid_subset_size,
                                    subsets=cfg.evaluate.kid_subsets, seed=cfg.seed)
    # The floor of FID at this N: as many real training images, scored exactly like the samples.
    g = streams.offset_generator(cfg.seed)
    reference = to_model_space(ds["train_x"][torch.randperm(len(ds["train_x"]), generator=g)[:len(fake)]])
    # Precision/recall compare manifolds of equal size: a seeded subset of the real set, as many as the samples.
    g_pr = streams.offset_generator(cfg.seed, streams.PR_REAL_SUBSET)
    real_subset = real_feats[torch.randperm(len(real_feats), generator=g_pr)[:len(fake)]]
    precision, recall = precision_recall(real_subset, fake_feats, k=cfg.evaluate.pr_k)
    probs = class_probabilities(classifier, fake)
    metrics = {
        "policy": spec.label, "n_fake": len(fake), "n_real": len(real_feats), "evaluator_sha256": digest,
        **quality_intervals(RealSet(real_feats, cfg.evaluate.groups), fake_feats),
        "kid": kid_mean, "kid_std": kid_std,
        "precision": precision, "recall": recall, "pr_k": cfg.evaluate.pr_k, "pr_n_real": len(real_subset),
        "fid_reference_train": fid(real_feats, extract_features(classifier, reference)),
        **classifier_stats(classifier, fake, probs=probs),
    }
    space_feats = {}
    for space in extra_spaces(cfg, paths):  # the same jackknife intervals, in each other feature space
        real_s = load_space_features(paths.real_features, space.name, weights_sha256=space.sha256)
        space_feats[space.name] = features_of(load_space(space), samples["images"])           # (N, d_s)
        metrics.update(frechet_intervals(RealGaussians(real_s, cfg.evaluate.groups).leave_out(space_feats[space.name]),
                                         n=len(fake), m=len(real_s), name=space.metric, label=space.label))
        metrics.setdefault("feature_spaces", {})[space.name] = space.record(real_s.shape[1])
    cost = read_json(paths.sample_metrics(spec.label), what)
    cost_keys = ("expert_evals_per_image", "router_evals_per_image", "gflops_per_image", "nfe_per_sample",
                 "wall_time_s", "images_per_s")
    metrics["cost"] = {k: cost[k] for k in cost_keys}
    save_tensors(paths.quality(spec.label), {
        "confidence": probs.max(1).values,                          # (N,) evaluator max-softmax
        "nn_distance": nearest_distance(fake_feats, real_feats),    # (N,) to the nearest real feature
        "seeds": samples["seeds"].long(),                           # (N,) the sample's seed
        "features": fake_feats.float(),                             # (N, d) evaluator features (paired contrasts)
        "evaluator_sha256": digest,                                 # the feature space they live in
        **({"spaces": space_feats} if space_feats else {}),         # {space: (N, d_s)} of the other spaces
    })
    write_json(paths.eval_metrics(spec.label), metrics)
    mirror(cfg, paths, f"evaluate@{spec.label}", "evaluate", {"evaluate": config_to_dict(cfg)["evaluate"],
           "policy": spec.label}, metrics, [paths.eval_metrics(spec.label), paths.quality(spec.label)],
           tags={"policy": spec.label, "evaluator_sha256": digest})
    return metrics
