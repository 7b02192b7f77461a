"""Stage `cluster`: PCA of pixels + k-means; assignments, centroids, sizes, purity and NMI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddmbench import cluster as clustering
from ddmbench.config import Config, config_to_dict
from ddmbench.data import load_prepared
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.paths import Paths
from ddmbench.tracking import mirror


def nearest_centroid(images: np.ndarray, c: clustering.Clustering) -> np.ndarray:
    """(N,) cluster of each image (uint8 (N, H, W)) by its nearest centroid in feature space."""
    feats = clustering.project(clustering.pixel_features(images), c.pca_mean, c.pca_components)
    d = ((feats[:, None, :] - c.centroids[None]) ** 2).sum(-1)
    return d.argmin(1).astype(np.int64)


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.clusters, paths.cluster_metrics)
    ds = load_prepared(paths.dataset)
    train_x, train_y = ds["train_x"].numpy(), ds["train_y"].numpy()
    k = cfg.cluster.k
    if k > len(train_x):
        raise ConfigError(f"params.yaml: cluster.k={k} is larger than the training set ({len(train_x)} images); "
                          "lower cluster.k or raise data.train_limit")
    c = clustering.fit_clusters(train_x, k, cfg.cluster.pca_dim, cfg.cluster.n_init, cfg.cluster.max_iter, cfg.seed)
    test_assign = nearest_centroid(ds["test_x"].numpy(), c)
    sizes = clustering.cluster_sizes(c.assignments, k)
    save_tensors(paths.clusters, {
        "assignments": torch.from_numpy(c.assignments), "test_assignments": torch.from_numpy(test_assign),
        "centroids": torch.from_numpy(c.centroids), "pca_mean": torch.from_numpy(c.pca_mean),
        "pca_components": torch.from_numpy(c.pca_components), "sizes": torch.from_numpy(sizes),
    })
    metrics = {
        "k": k, "sizes": sizes.tolist(), "size_min_over_max": float(sizes.min() / sizes.max()),
        "purity": clustering.purity(c.assignments, train_y), "nmi": clustering.nmi(c.assignments, train_y),
        "inertia": c.inertia, "pca_dim": int(c.pca_components.shape[0]),
    }
    write_json(paths.cluster_metrics, metrics)
    mirror(cfg, paths, "cluster", "cluster", {"cluster": config_to_dict(cfg)["cluster"], "seed": cfg.seed},
           metrics, [paths.cluster_metrics])
    return metrics


def load_clusters(paths: Paths, ds: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The clustering outputs; with ``ds`` (the prepared dataset) also check they were made from it."""
    from ddmbench.io import load_tensors

    clusters = load_tensors(paths.clusters, "ddmbench cluster")
    for key in ("assignments", "test_assignments", "centroids", "sizes"):
        if key not in clusters:
            raise ArtifactError(f"{paths.clusters} has no '{key}'; re-run `ddmbench cluster`")
    if ds is not None and (len(clusters["assignments"]) != len(ds["train_x"])
                           or len(clusters["test_assignments"]) != len(ds["test_x"])):
        raise ArtifactError(f"{paths.clusters} was made from another dataset.pt (sizes differ); "
                            "re-run `ddmbench cluster`")
    return clusters
