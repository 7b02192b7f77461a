"""Clustering variants with known answers: k-means and two-stage recover separated blobs, the random
partition is seeded and at chance, balancing caps sizes, and the evaluator-embedding path runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import N_TRAIN, Project

from ddmbench.cluster import partition as clustering
from ddmbench.config import parse_config
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import load_tensors
from ddmbench.pipeline import cluster as cluster_stage
from ddmbench.pipeline import prepare, train_evaluator


def blobs(sizes: list[int], dim: int = 6, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: centres on the axes 10 apart, tiny spread -> (N, dim) float32, (N,) labels."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([10 * np.eye(dim)[i] + spread * rng.standard_normal((n, dim)) for i, n in enumerate(sizes)])
    y = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    return x.astype(np.float32), y


def fit(x: np.ndarray, k: int, method: str, **kw: object) -> clustering.Clustering:
    opts = {"pca_dim": x.shape[1], "n_init": 3, "max_iter": 100, "seed": 0, "fine_k": 30} | kw
    return clustering.fit_clusters(x, k, method=method, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["kmeans", "two-stage"])
def test_separated_blobs_are_recovered(method: str) -> None:
    x, y = blobs([120, 80, 60, 40])
    c = fit(x, 4, method)
    assert clustering.purity(c.assignments, y) == 1.0
    assert clustering.nmi(c.assignments, y) == pytest.approx(1.0)
    assert sorted(clustering.cluster_sizes(c.assignments, 4).tolist()) == [40, 60, 80, 120]
    # centroids are the members' means in the PCA space
    feats = clustering.project(x, c.pca_mean, c.pca_components)
    for j in range(4):
        np.testing.assert_allclose(feats[c.assignments == j].mean(0), c.centroids[j], atol=1e-4)


def test_two_stage_consolidates_fine_centroids_by_count() -> None:
    # 3 blobs, 30 fine centroids: every fine centroid lies inside one blob, so the coarse clusters are the blobs
    x, y = blobs([200, 50, 50], dim=3, spread=0.5)
    c = fit(x, 3, "two-stage", fine_k=30)
    assert clustering.purity(c.assignments, y) == 1.0
    with pytest.raises(ValueError, match="fine_k=2 must be at least cluster.k=3"):
        fit(x, 3, "two-stage", fine_k=2)


def test_random_partition_is_seeded_equal_sized_and_at_chance() -> None:
    x, y = blobs([500, 500, 500, 500])
    a, b = fit(x, 4, "random", seed=3), fit(x, 4, "random", seed=3)
    assert a.assignments.tobytes() == b.assignments.tobytes()
    assert fit(x, 4, "random", seed=4).assignments.tobytes() != a.assignments.tobytes()
    assert clustering.cluster_sizes(a.assignments, 4).tolist() == [500] * 4
    assert clustering.purity(a.assignments, y) < 0.30      # chance is 0.25; k-means gets 1.0 on these blobs
    assert clustering.nmi(a.assignments, y) < 0.02
    sizes = clustering.cluster_sizes(fit(x[:1003], 4, "random").assignments, 4)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("method", ["kmeans", "two-stage"])
def test_balance_caps_every_cluster(method: str) -> None:
    x, _ = blobs([300, 100, 50])
    natural = fit(x, 3, method)
    balanced = fit(x, 3, method, balanced=True)
    sizes = clustering.cluster_sizes(balanced.assignments, 3)
    assert sizes.sum() == 450 and sizes.max() <= 150 and sizes.tolist() == [150, 150, 150]
    assert clustering.size_stats(sizes)["size_cv"] == 0.0
    assert clustering.size_stats(clustering.cluster_sizes(natural.assignments, 3))["size_cv"] > 0.5
    again = fit(x, 3, method, balanced=True)
    assert again.assignments.tobytes() == balanced.assignments.tobytes()


def test_balance_keeps_the_nearest_centroid_when_there_is_room() -> None:
    x, y = blobs([50, 50, 50])
    c = fit(x, 3, "kmeans", balanced=True)   # already balanced: nothing moves
    assert clustering.purity(c.assignments, y) == 1.0


def test_size_stats_by_hand() -> None:
    stats = clustering.size_stats(np.array([10, 30]))
    assert stats["size_min_over_max"] == pytest.approx(1 / 3)
    assert stats["size_cv"] == pytest.approx(0.5)   # std 10 / mean 20


def test_config_checks_fine_k() -> None:
    with pytest.raises(ConfigError, match="cluster.fine_k=2 must be at least cluster.k=4"):
        parse_config({"cluster": {"k": 4, "method": "two-stage", "fine_k": 2}})
    with pytest.raises(ConfigError, match="cluster.method"):
        parse_config({"cluster": {"method": "spectral"}})
    with pytest.raises(ConfigError, match="random partition is already balanced"):
        parse_config({"cluster": {"method": "random", "balance": True}})


def test_stage_records_the_variant(project: Project) -> None:
    project.update(cluster={"method": "random", "balance": False})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    metrics = cluster_stage.run(cfg, project.paths)
    assert (metrics["method"], metrics["features"], metrics["balance"]) == ("random", "pixel-pca", False)
    assert metrics["sizes"] == [N_TRAIN // 2] * 2 and metrics["size_cv"] == 0.0
    assert json.loads(project.paths.cluster_metrics.read_text())["method"] == "random"
    blob = load_tensors(project.paths.clusters, "cluster")
    assert sorted(blob["test_assignments"].unique().tolist()) == [0, 1]


def test_evaluator_features_need_the_evaluator(project: Project) -> None:
    project.update(cluster={"features": "evaluator"})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    with pytest.raises(ArtifactError, match="evaluator.pt is missing.*train-evaluator"):
        cluster_stage.run(cfg, project.paths)


@pytest.mark.slow
def test_evaluator_embedding_two_stage_end_to_end(project: Project) -> None:
    project.update(cluster={"features": "evaluator", "method": "two-stage", "fine_k": 12, "pca_dim": 8},
                   evaluator={"steps": 30})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    train_evaluator.run(cfg, project.paths)
    metrics = cluster_stage.run(cfg, project.paths)
    assert (metrics["features"], metrics["method"], metrics["fine_k"]) == ("evaluator", "two-stage", 12)
    blob = load_tensors(project.paths.clusters, "cluster")
    assert blob["pca_mean"].shape == (128,)          # the classifier-s embedding, not 784 pixels
    assert blob["centroids"].shape == (2, 8) and sum(metrics["sizes"]) == N_TRAIN
    # the embedding of a classifier trained on the 4 pattern families keeps each family together:
    # (almost) all of a family lands in one cluster
    ds = load_tensors(project.paths.dataset, "prepare")
    for label in range(4):
        members = blob["assignments"][ds["train_y"] == label]
        assert members.bincount(minlength=2).max() / len(members) >= 0.9


@pytest.mark.slow
def test_embedder_features_cluster_without_the_evaluator(project: Project) -> None:
    """features=embedder trains its own classifier (classifier-xs, the experiment seed) inside `cluster`: no
    evaluator is needed, the embedding is 64-d, its identity is recorded, families stay together, and a re-run
    reproduces the partition bit for bit."""
    project.update(cluster={"features": "embedder", "method": "two-stage", "fine_k": 12, "pca_dim": 8,
                            "embedder": {"steps": 30}})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    assert not project.paths.model("evaluator").exists()
    metrics = cluster_stage.run(cfg, project.paths)
    assert (metrics["features"], metrics["embedder_net"], metrics["embedder_steps"]) == ("embedder", "classifier-xs", 30)
    assert len(metrics["embedder_sha256"]) == 64 and 0.0 <= metrics["embedder_test_acc"] <= 1.0
    blob = load_tensors(project.paths.clusters, "cluster")
    assert blob["pca_mean"].shape == (64,)           # classifier-xs features, not the evaluator's 128
    ds = load_tensors(project.paths.dataset, "prepare")
    for label in range(4):
        members = blob["assignments"][ds["train_y"] == label]
        assert members.bincount(minlength=2).max() / len(members) >= 0.9
    again = cluster_stage.run(cfg, project.paths)
    assert again["embedder_sha256"] == metrics["embedder_sha256"]
    assert load_tensors(project.paths.clusters, "cluster")["assignments"].equal(blob["assignments"])
    assert not project.paths.resume("cluster-embedder").exists()
