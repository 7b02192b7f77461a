"""Data clustering for expert assignment: features -> PCA -> a partition into K clusters (scikit-learn).

Arrays in, arrays out; no file I/O, no models. Follows McAllister et al. (arXiv 2501.05450) Sec. 3: the
training set is split into K disjoint clusters by k-means on image features, one expert per cluster; at
scale they first fit many fine centroids and consolidate them into K coarse clusters ("two-stage").
A seeded random partition is the ablation baseline. Every method has the same signature and is chosen
by name from :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score


@dataclass
class Clustering:
    """assignments: (N,) int64 cluster id per training image.
    centroids: (K, d) cluster centres in the PCA feature space.
    pca_mean: (D,) and pca_components: (d, D), so features = (raw features - mean) @ components.T.
    inertia: sum of squared distances of the features to their cluster's centroid.
    """

    assignments: np.ndarray
    centroids: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    inertia: float


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C*H*W) in [-1, 1] (the model space, flattened)."""
    return images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0


def fit_pca(x: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of x (N, D) to d = min(dim, D, N) components -> (features (N, d), mean (D,), components (d, D))."""
    solver = "full" if len(x) < 2000 else "randomized"
    pca = PCA(n_components=min(dim, x.shape[1], len(x)), random_state=seed, svd_solver=solver)
    feats = pca.fit_transform(x).astype(np.float32)
    return feats, pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def project(x: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray) -> np.ndarray:
    """(N, D) raw features -> (N, d) clustering features."""
    return ((x - pca_mean) @ pca_components.T).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# partition methods: (feats (N, d), k, *, seed, n_init, max_iter, fine_k)
#                    -> (assignments (N,) int64, centroids (K, d) float32, inertia)
# ----------------------------------------------------------------------------------------------
Partition = tuple[np.ndarray, np.ndarray, float]


def kmeans(feats: np.ndarray, k: int, *, seed: int, n_init: int, max_iter: int, fine_k: int) -> Partition:
    """Plain k-means with ``k`` clusters (``fine_k`` unused)."""
    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    assignments = km.fit_predict(feats).astype(np.int64)
    return assignments, km.cluster_centers_.astype(np.float32), float(km.inertia_)


def two_stage(feats: np.ndarray, k: int, *, seed: int, n_init: int, max_iter: int, fine_k: int) -> Partition:
    """McAllister et al.'s two-stage clustering: ``fine_k`` fine k-means centroids, then k-means over those
    centroids weighted by how many images each holds, giving K coarse clusters; an image joins the coarse
    cluster of its fine centroid."""
    fine_k = min(fine_k, len(feats))
    if fine_k < k:
        raise ValueError(f"cluster.fine_k={fine_k} must be at least cluster.k={k}")
    fine = KMeans(n_clusters=fine_k, n_init=1, max_iter=max_iter, random_state=seed).fit(feats)
    counts = np.bincount(fine.labels_, minlength=fine_k).astype(np.float64)
    coarse = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    coarse_of_fine = coarse.fit_predict(fine.cluster_centers_, sample_weight=counts)  # (fine_k,)
    return _with_centroids(feats, coarse_of_fine[fine.labels_].astype(np.int64), k)


def random_partition(feats: np.ndarray, k: int, *, seed: int, n_init: int, max_iter: int, fine_k: int
                     ) -> Partition:
    """A seeded random partition into K clusters whose sizes differ by at most one (features unused)."""
    order = np.random.default_rng(seed).permutation(len(feats))
    out = np.empty(len(feats), dtype=np.int64)
    out[order] = np.arange(len(feats)) % k
    return _with_centroids(feats, out, k)


Method = Callable[..., Partition]
METHODS: dict[str, Method] = {"kmeans": kmeans, "two-stage": two_stage, "random": random_partition}


def centroids_of(feats: np.ndarray, assignments: np.ndarray, k: int) -> np.ndarray:
    """(K, d) mean feature of each cluster (an empty cluster gets the overall mean)."""
    out = np.tile(feats.mean(0, keepdims=True), (k, 1))
    for c in range(k):
        members = feats[assignments == c]
        if len(members):
            out[c] = members.mean(0)
    return out.astype(np.float32)


def _with_centroids(feats: np.ndarray, assignments: np.ndarray, k: int) -> Partition:
    centroids = centroids_of(feats, assignments, k)
    return assignments, centroids, inertia_of(feats, assignments, centroids)


def inertia_of(feats: np.ndarray, assignments: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the features (N, d) to their cluster's centroid."""
    return float(((feats - centroids[assignments]) ** 2).sum())


def sq_distances(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, d), (K, d) -> (N, K) squared Euclidean distances (direct differences: exact ties stay ties)."""
    return ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)


def balance(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Equal-size assignment: each cluster holds at most ceil(N/K) images.

    Greedy by distance: all (image, centroid) pairs are visited from nearest to farthest (stable order, so
    ties resolve by index) and an image joins the first centroid that still has room. Deterministic and
    O(NK log NK); an approximation of the optimal balanced assignment (a min-cost flow).
    """
    n, k = len(feats), len(centroids)
    cap = -(-n // k)
    d = sq_distances(feats, centroids)  # (N, K)
    order = np.argsort(d, axis=None, kind="stable")
    out = np.full(n, -1, dtype=np.int64)
    room = np.full(k, cap)
    for flat in order:
        i, c = divmod(int(flat), k)
        if out[i] < 0 and room[c] > 0:
            out[i] = c
            room[c] -= 1
    return out


def fit_clusters(x: np.ndarray, k: int, *, method: str = "kmeans", pca_dim: int, n_init: int, max_iter: int,
                 seed: int, fine_k: int = 100, balanced: bool = False) -> Clustering:
    """Raw features x (N, D) -> PCA to ``pca_dim`` -> ``method`` with ``k`` clusters; deterministic per seed.

    x: float features, or uint8 images (N, H, W) taken as their pixels (:func:`pixel_features`).
    balanced: reassign so that every cluster has ceil(N/K) or fewer images (see :func:`balance`).
    """
    if k > len(x):
        raise ValueError(f"cluster.k={k} is larger than the number of training images ({len(x)})")
    if method not in METHODS:
        raise ValueError(f"unknown cluster.method '{method}'; known: {', '.join(METHODS)}")
    if balanced and method == "random":
        raise ValueError("cluster.balance=true with cluster.method=random: the random partition is already "
                         "balanced; set balance: false")
    if x.dtype == np.uint8:
        x = pixel_features(x)
    feats, pca_mean, pca_components = fit_pca(x, pca_dim, seed)  # (N, d)
    assignments, centroids, inertia = METHODS[method](feats, k, seed=seed, n_init=n_init, max_iter=max_iter,
                                                      fine_k=fine_k)
    if balanced:
        assignments, centroids, inertia = _with_centroids(feats, balance(feats, centroids), k)
    return Clustering(assignments=assignments, centroids=centroids, pca_mean=pca_mean,
                      pca_components=pca_components, inertia=inertia)


def given_partition(x: np.ndarray, assignments: np.ndarray, k: int, *, pca_dim: int, seed: int) -> Clustering:
    """A partition made elsewhere (an imported DDM's clusters) in the form :func:`fit_clusters` returns: the PCA of
    x (N, D) or of uint8 images' pixels, and each cluster's mean feature as its centroid."""
    if x.dtype == np.uint8:
        x = pixel_features(x)
    feats, pca_mean, pca_components = fit_pca(x, pca_dim, seed)
    assignments, centroids, inertia = _with_centroids(feats, assignments.astype(np.int64), k)
    return Clustering(assignments=assignments, centroids=centroids, pca_mean=pca_mean,
                      pca_components=pca_components, inertia=inertia)


def nearest_centroid(x: np.ndarray, c: Clustering) -> np.ndarray:
    """Raw features x (N, D) -> (N,) index of the nearest centroid in the clustering feature space."""
    return sq_distances(project(x, c.pca_mean, c.pca_components), c.centroids).argmin(1).astype(np.int64)


def cluster_sizes(assignments: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(assignments, minlength=k)


def size_stats(sizes: np.ndarray) -> dict[str, float]:
    """Balance of a partition: min/max size ratio and coefficient of variation (std/mean; 0 = equal sizes)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return {"size_min_over_max": float(sizes.min() / sizes.max()) if sizes.max() > 0 else 0.0,
            "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else 0.0}


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose label is the majority label of their cluster."""
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return float(total / len(labels))


def nmi(assignments: np.ndarray, labels: np.ndarray) -> float:
    return float(normalized_mutual_info_score(labels, assignments))
