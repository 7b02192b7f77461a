"""Clustering: PCA + k-means shapes, determinism per seed, purity/NMI, and the `cluster` stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, Project, make_images

from ddmbench.cluster import partition as clustering
from ddmbench.errors import ConfigError
from ddmbench.io import load_tensors
from ddmbench.pipeline import cluster as cluster_stage
from ddmbench.pipeline import prepare


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return make_images(160, seed=11)


def test_shapes(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = images
    c = clustering.fit_clusters(x, k=3, pca_dim=10, n_init=2, max_iter=100, seed=0)
    assert c.assignments.shape == (160,) and c.assignments.dtype == np.int64
    assert set(np.unique(c.assignments)) == {0, 1, 2}
    assert c.centroids.shape == (3, 10) and c.centroids.dtype == np.float32
    assert c.pca_mean.shape == (784,) and c.pca_components.shape == (10, 784)
    assert c.inertia > 0
    # centroids live in the projected feature space: each is the mean of its members' features
    feats = clustering.project(clustering.pixel_features(x), c.pca_mean, c.pca_components)
    for j in range(3):
        np.testing.assert_allclose(feats[c.assignments == j].mean(0), c.centroids[j], rtol=1e-3, atol=1e-3)


def test_pca_dim_is_capped_by_the_data() -> None:
    x, _ = make_images(6, seed=0)
    c = clustering.fit_clusters(x, k=2, pca_dim=32, n_init=1, max_iter=50, seed=0)
    assert c.centroids.shape == (2, 6)


def test_same_seed_same_assignments_byte_for_byte(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = images
    a = clustering.fit_clusters(x, k=4, pca_dim=8, n_init=3, max_iter=100, seed=5)
    b = clustering.fit_clusters(x.copy(), k=4, pca_dim=8, n_init=3, max_iter=100, seed=5)
    assert a.assignments.tobytes() == b.assignments.tobytes()
    assert a.centroids.tobytes() == b.centroids.tobytes()


def test_seed_changes_the_run() -> None:
    # overlapping, noisy data: different seeds give different local optima or labelings
    x, _ = make_images(160, seed=3, jitter=4, noise=120)
    runs = {clustering.fit_clusters(x, k=6, pca_dim=8, n_init=1, max_iter=5, seed=s).assignments.tobytes()
            for s in range(4)}
    assert len(runs) > 1


def test_k_larger_than_n_is_rejected() -> None:
    x, _ = make_images(3, seed=0)
    with pytest.raises(ValueError, match="cluster.k=5"):
        clustering.fit_clusters(x, k=5, pca_dim=2, n_init=1, max_iter=10, seed=0)


def test_separable_data_gives_purity_and_nmi_one() -> None:
    x, y = make_images(90, seed=4, jitter=0, noise=10, num_labels=3)
    c = clustering.fit_clusters(x, k=3, pca_dim=4, n_init=4, max_iter=100, seed=0)
    assert clustering.purity(c.assignments, y) == 1.0
    assert clustering.nmi(c.assignments, y) == pytest.approx(1.0)
    assert clustering.cluster_sizes(c.assignments, 3).tolist() == [30, 30, 30]


def test_purity_by_hand() -> None:
    assignments = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([5, 5, 7, 7, 7, 7])
    assert clustering.purity(assignments, labels) == pytest.approx(5 / 6)
    assert clustering.purity(np.zeros(6, dtype=np.int64), labels) == pytest.approx(4 / 6)
    assert clustering.nmi(np.zeros(6, dtype=np.int64), labels) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_purity_and_nmi_in_unit_interval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    assignments = rng.integers(0, 4, size=200)
    labels = rng.integers(0, 10, size=200)
    assert 0.0 <= clustering.purity(assignments, labels) <= 1.0
    assert 0.0 <= clustering.nmi(assignments, labels) <= 1.0


def test_cluster_sizes_counts_empty_clusters() -> None:
    assert clustering.cluster_sizes(np.array([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]


def test_cluster_stage_outputs(project: Project) -> None:
    cfg = project.config()
    prepare.run(cfg, project.paths)
    metrics = cluster_stage.run(cfg, project.paths)
    blob = load_tensors(project.paths.clusters, "ddmbench cluster")
    assert blob["assignments"].shape == (N_TRAIN,) and blob["test_assignments"].shape == (N_TEST,)
    assert blob["centroids"].shape == (2, cfg.cluster.pca_dim)
    assert blob["sizes"].tolist() == metrics["sizes"] and sum(metrics["sizes"]) == N_TRAIN
    assert torch.equal(torch.bincount(blob["assignments"], minlength=2), blob["sizes"])
    assert 0.0 <= metrics["purity"] <= 1.0 and 0.0 <= metrics["nmi"] <= 1.0
    assert json.loads(project.paths.cluster_metrics.read_text()) == metrics
    # each test image goes to its nearest centroid; on these well-separated patterns that agrees with
    # k-means on the training split for the same pattern family
    train_mode = {}
    ds = load_tensors(project.paths.dataset, "prepare")
    for label in range(4):
        train_mode[label] = int(torch.mode(blob["assignments"][ds["train_y"] == label]).values)
    agree = np.mean([train_mode[int(y)] == int(a) for y, a in zip(ds["test_y"], blob["test_assignments"])])
    assert agree > 0.9
    # deterministic: a second run gives byte-identical assignments
    cluster_stage.run(cfg, project.paths)
    again = load_tensors(project.paths.clusters, "ddmbench cluster")
    assert again["assignments"].numpy().tobytes() == blob["assignments"].numpy().tobytes()


def test_cluster_stage_rejects_k_above_n(project: Project) -> None:
    project.update(data={"train_limit": 3}, cluster={"k": 4}, experts=[0, 1, 2, 3])
    cfg = project.config()
    prepare.run(cfg, project.paths)
    with pytest.raises(ConfigError, match="cluster.k=4 is larger than the training set"):
        cluster_stage.run(cfg, project.paths)
