"""Stage `cluster`: features (pixels, the evaluator's embedding, or an embedding classifier of its own) -> PCA
-> K clusters; sizes, purity, NMI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddmbench.cluster import partition as clustering
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.models.nets import Classifier
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror


def feature_net(cfg: Config, paths: Paths, ds: dict[str, torch.Tensor]) -> tuple[Classifier | None, dict[str, Any]]:
    """The network whose embedding ``cluster.features`` names (None for pixels) and what to record about it."""
    if cfg.cluster.features == "pixel-pca":
        return None, {}
    if cfg.cluster.features == "embedder":
        from ddmbench.pipeline.cluster_embedder import train_embedder

        embedder = train_embedder(cfg, paths, ds)
        return embedder.net, embedder.metrics
    from ddmbench.models.checkpoints import load_classifier

    if not paths.model("evaluator").exists():
        raise ArtifactError(f"{paths.model('evaluator')} is missing and cluster.features=evaluator needs it; "
                            "run `ddmbench train-evaluator` first")
    return load_classifier(paths.model("evaluator")), {}


def features(net: Classifier | None, images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 (N, D) clustering features: pixels, or ``net``'s embedding."""
    if net is None:
        return clustering.pixel_features(images.numpy())
    from ddmbench.evaluation.features import extract_features

    return extract_features(net, to_model_space(images)).numpy().astype(np.float32)  # (N, num_features)


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
    net, net_metrics = feature_net(cfg, paths, ds)
    c = clustering.fit_clusters(features(net, ds["train_x"]), k, method=cc.method, pca_dim=cc.pca_dim,
                                n_init=cc.n_init, max_iter=cc.max_iter, seed=cfg.seed, fine_k=cc.fine_k,
                                balanced=cc.balance)
    test_assign = assign_test_split(cfg, c, features(net, ds["test_x"]))
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
        "inertia": c.inertia, "pca_dim": int(c.pca_components.shape[0]), **net_metrics,
    }
    if cc.method == "two-stage":
        metrics["fine_k"] = min(cc.fine_k, len(train_y))
    write_json(paths.cluster_metrics, metrics)
    mirror(cfg, paths, "cluster", "cluster", {"cluster": config_to_dict(cfg)["cluster"], "seed": cfg.seed},
           metrics, [paths.cluster_metrics])
    return metrics


