"""Data clustering for expert assignment: pixel features -> PCA -> k-means (scikit-learn).

Arrays in, arrays out; no file I/O. Follows McAllister et al. (arXiv 2501.05450) Sec. 3: the training
set is split into K disjoint clusters by k-means on image features, one expert per cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score


@dataclass
class Clustering:
    """assignments: (N,) int64 cluster id per training image.
    centroids: (K, d) cluster centres in the PCA feature space.
    pca_mean: (D,) and pca_components: (d, D), so features = (pixels - mean) @ components.T.
    """

    assignments: np.ndarray
    centroids: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    inertia: float


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, H*W) in [-1, 1] (the model space, flattened)."""
    return images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0


def fit_clusters(images: np.ndarray, k: int, pca_dim: int, n_init: int, max_iter: int, seed: int) -> Clustering:
    """PCA to ``pca_dim`` then k-means with ``k`` clusters; deterministic for a given seed."""
    x = pixel_features(images)
    if k > len(x):
        raise ValueError(f"cluster.k={k} is larger than the number of training images ({len(x)})")
    solver = "full" if len(x) < 2000 else "randomized"
    pca = PCA(n_components=min(pca_dim, x.shape[1], len(x)), random_state=seed, svd_solver=solver)
    feats = pca.fit_transform(x).astype(np.float32)  # (N, d)
    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    assignments = km.fit_predict(feats).astype(np.int64)
    return Clustering(assignments=assignments, centroids=km.cluster_centers_.astype(np.float32),
                      pca_mean=pca.mean_.astype(np.float32), pca_components=pca.components_.astype(np.float32),
                      inertia=float(km.inertia_))


def project(flat_pixels: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray) -> np.ndarray:
    """(N, D) pixels in [-1, 1] -> (N, d) clustering features."""
    return (flat_pixels - pca_mean) @ pca_components.T


def cluster_sizes(assignments: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(assignments, minlength=k)


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose label is the majority label of their cluster."""
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return float(total / len(labels))


def nmi(assignments: np.ndarray, labels: np.ndarray) -> float:
    return float(normalized_mutual_info_score(labels, assignments))
