"""Stage `cluster`: features (pixels or the evaluator's embedding) -> PCA -> K clusters; sizes, purity, NMI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddmbench.cluster import partition as clustering
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror


def features(cfg: Config, paths: Paths, images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 (N, D) raw clustering features named by ``cluster.features``."""
    if cfg.cluster.features == "pixel-pca":
        return clustering.pixel_features(images.numpy())
    from ddmbench.evaluation.features import extract_features
    from ddmbench.models.checkpoints import load_classifier

    if not paths.model("evaluator").exists():
        raise ArtifactError(f"{paths.model('evaluator')} is missing and cluster.features=evaluator needs it; "
                            "run `ddmbench train-evaluator` first")
    classifier = load_classifier(paths.model("evaluator"))
    return extract_features(classifier, to_model_space(images)).numpy().astype(np.float32)  # (N, num_features)


def nearest_centroid(images: np.ndarray, c: clustering.Clustering) -> np.ndarray:
    """(N,) cluster of each image (uint8 (N, C, H, W)) by its nearest centroid in pixel-PCA space."""
    return clustering.nearest_centroid(clustering.pixel_features(images), c)


def assign_test_split(cfg: Config, c: clustering.Clustering, test_feats: np.ndarray) -> np.ndarray:
    """Clusters of the test split: nearest centroid, or for the random partition a random one of its own."""
    if cfg.cluster.method == "random":
        return clustering.random_partition(test_feats, cfg.cluster.k, seed=cfg.seed + 1, n_init=1, max_iter=1,
                                           fine_k=1)[0]
    return clustering.nearest_centroid(test_feats, c)


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.clusters, paths.cluster_metrics)
    ds = load_prepared(paths.dataset)
    train_y = ds["train_y"].numpy()
    cc, k = cfg.cluster, cfg.cluster.k
    if k > len(ds["train_x"]):
        raise ConfigError(f"params.yaml: cluster.k={k} is larger than the training set ({len(ds['train_x'])} images); "
                          "lower cluster.k or raise data.train_limit")
    c = clustering.fit_clusters(features(cfg, paths, ds["train_x"]), k, method=cc.method, pca_dim=cc.pca_dim,
                                n_init=cc.n_init, max_iter=cc.max_iter, seed=cfg.seed, fine_k=cc.fine_k,
                                balanced=cc.balance)
    test_assign = assign_test_split(cfg, c, features(cfg, paths, ds["test_x"]))
    sizes = clustering.cluster_sizes(c.assignments, k)
    save_tensors(paths.clusters, {
        "assignments": torch.from_numpy(c.assignments), "test_assignments": torch.from_numpy(test_assign),
        "centroids": torch.from_numpy(c.centroids), "pca_mean": torch.from_numpy(c.pca_mean),
        "pca_components": torch.from_numpy(c.pca_components), "sizes": torch.from_numpy(sizes),
    })
    metrics = {
        "k": k, "features": cc.features, "method": cc.method, "balance": cc.balance,
        "sizes": sizes.tolist(), **clustering.size_stats(sizes),
        "purity": clustering.purity(c.assignments, train_y), "nmi": clustering.nmi(c.assignments, train_y),
        "inertia": c.inertia, "pca_dim": int(c.pca_components.shape[0]),
    }
    if cc.method == "two-stage":
        metrics["fine_k"] = min(cc.fine_k, len(train_y))
    write_json(paths.cluster_metrics, metrics)
    mirror(cfg, paths, "cluster", "cluster", {"cluster": config_to_dict(cfg)["cluster"], "seed": cfg.seed},
           metrics, [paths.cluster_metrics])
    return metrics


