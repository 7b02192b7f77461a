"""k-NN manifold precision / recall (Kynkäänniemi et al. 2019) and per-sample distance to the real set."""

from __future__ import annotations

import torch


def knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """(N, d) -> (N,) distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return torch.cdist(feats, feats).kthvalue(k + 1, dim=1).values  # the 1st "neighbour" is the point itself


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, query: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(Q,) bool: query point inside at least one ball B(manifold_i, radii_i)."""
    return torch.cat([(torch.cdist(q, manifold) <= radii).any(1) for q in query.split(chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 3 and their reference code).

    Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
    neighbour. precision: fraction of generated points inside the real manifold; recall: fraction of real
    points inside the generated manifold. real: (M, d), fake: (N, d); use M = N (the paper's setting).
    Neither torchmetrics 1.9 nor scikit-learn offers this metric, hence these few lines.
    """
    real, fake = real.double(), fake.double()
    precision = _coverage(real, knn_radii(real, k), fake).double().mean()
    recall = _coverage(fake, knn_radii(fake, k), real).double().mean()
    return float(precision), float(recall)


def nearest_distance(query: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N, d), (M, d) -> (N,) Euclidean distance of each query row to its nearest reference row."""
    query, reference = query.double(), reference.double()
    return torch.cat([torch.cdist(q, reference).min(1).values for q in query.split(chunk)]).float()
