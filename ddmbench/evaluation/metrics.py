"""Sample quality in the evaluator's feature space: FID and KID (torchmetrics) with bootstrap intervals,
k-NN precision/recall, confidence and class entropy, and per-sample quality.

Inception weights cannot be downloaded offline and mean little for 28x28 digits, so the trained
evaluator classifier's penultimate layer is the feature extractor (``num_features`` set, eval mode,
frozen, never in an optimizer).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ddmbench.models.nets import Classifier

warnings.filterwarnings("ignore", message=r".*will save all extracted features in buffer.*")


@torch.no_grad()
def extract_features(classifier: Classifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, num_features) evaluator features (eval mode, no grad)."""
    classifier.eval()
    return torch.cat([classifier.features(chunk.float()) for chunk in images.split(batch)])


class Precomputed(nn.Module):
    """The feature extractor torchmetrics sees: features are extracted once with :func:`extract_features`
    and passed through unchanged, so real and generated sets are never pushed through the net twice."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, d) (torchmetrics' Fréchet distance of their Gaussians)."""
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, *, subset_size: int, subsets: int, seed: int) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets (N, d); subsets drawn from ``seed``."""
    metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets,
                                     subset_size=min(subset_size, len(real), len(fake)), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID draws its subsets with torch.randperm
        mean, std = metric.compute()
    return float(mean), float(std)


@torch.no_grad()
def class_probabilities(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, classes) evaluator softmax; its row max is a sample's confidence."""
    classifier.eval()
    return torch.cat([torch.softmax(classifier(chunk.float()), dim=1) for chunk in images.split(1000)])


@torch.no_grad()
def classifier_stats(classifier: Classifier, images: torch.Tensor, num_classes: int = 10,
                     probs: torch.Tensor | None = None) -> dict[str, float]:
    """Mean max-softmax confidence and the entropy (nats) of the predicted-class histogram (mode collapse lowers it).

    probs: (N, classes) from :func:`class_probabilities`, when already computed.
    """
    probs = class_probabilities(classifier, images) if probs is None else probs
    hist = torch.bincount(probs.argmax(1), minlength=num_classes).double() / len(images)
    nz = hist[hist > 0]
    entropy = float(-(nz * nz.log()).sum())
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": entropy,
            "class_entropy_max": math.log(num_classes)}


# ----------------------------------------------------------------------------------------------
# Uncertainty: bootstrap over the generated set, with the real-set statistics computed once
# ----------------------------------------------------------------------------------------------

class FrechetToReal:
    """Fréchet distance of generated feature sets to one fixed real set (Heusel et al. 2017, Eq. 6).

    FID = ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^{1/2}). torchmetrics takes the last trace from
    the eigenvalues of S_r S_f; they are those of the symmetric PSD matrix R S_f R with R = S_r^{1/2} (similar
    matrices), so R is computed once and each generated set costs one symmetric eigensolve. float64
    throughout, unbiased covariances (N - 1) as in torchmetrics.
    """

    def __init__(self, real: torch.Tensor) -> None:
        """real: (M, d) features."""
        self.mean, cov = mean_cov(real.double())
        evals, evecs = torch.linalg.eigh(cov)
        self.cov_sqrt = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T    # (d, d) R = S_r^{1/2}
        self.trace = torch.diagonal(cov).sum()

    def __call__(self, fake: torch.Tensor) -> torch.Tensor:
        """fake: (..., N, d) features -> (...) FID of each set."""
        mean, cov = mean_cov(fake.double())
        m = self.cov_sqrt @ cov @ self.cov_sqrt                           # (..., d, d) symmetric PSD
        d = m.shape[-1]
        # one eigvalsh per matrix: on the CPU torch's batched eigvalsh measured 4x slower than this loop
        evals = torch.stack([torch.linalg.eigvalsh(x) for x in m.reshape(-1, d, d)]).reshape(*m.shape[:-1])
        tr_sqrt = evals.clamp_min(0).sqrt().sum(-1)                       # tr((S_r S_f)^{1/2})
        tr_cov = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
        return (mean - self.mean).square().sum(-1) + self.trace + tr_cov - 2 * tr_sqrt


def mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N, d) -> mean (..., d) and unbiased covariance (..., d, d)."""
    mean = x.mean(-2)
    xc = x - mean.unsqueeze(-2)
    return mean, xc.transpose(-2, -1) @ xc / (x.shape[-2] - 1)


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018; torchmetrics' defaults): (M, d), (N, d) -> (M, N)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


class KernelToReal:
    """Unbiased MMD^2 (KID) of resamples of one generated set against one fixed real set.

    With all M real and N generated features this is the full-set U-statistic, which torchmetrics' KID
    averages over random equal-size subsets (same expectation; it equals torchmetrics' KID with one subset
    of all samples when M = N). A bootstrap resample is a count vector c (N,) over the generated rows; its
    generated-generated term sums k over pairs of *distinct* rows, sum_{i != j} c_i c_j k_ij / (N^2 - sum c_i^2),
    because a row paired with its own duplicate would add k(x, x) and bias every resample upwards.
    The kernel matrices are computed once; the real-real sum (M^2 entries, the same for every resample)
    in float32 chunks summed in float64.
    """

    def __init__(self, real: torch.Tensor, fake: torch.Tensor, chunk: int = 2048) -> None:
        """real: (M, d), fake: (N, d) features."""
        m, r32 = len(real), real.float()
        k_rr = 0.0
        for start in range(0, m, chunk):  # k is symmetric: each chunk against itself and the rows after it, twice
            block = poly_kernel(r32[start:start + chunk], r32[start:])
            size = min(chunk, m - start)
            k_rr += float(block[:, :size].sum(dtype=torch.float64) + 2 * block[:, size:].sum(dtype=torch.float64))
        real, fake = real.double(), fake.double()
        diag_rr = float(((real * real).sum(1) / real.shape[1] + 1.0).pow(3).sum())
        self.real_term = (k_rr - diag_rr) / (m * (m - 1))
        self.cross = torch.cat([poly_kernel(f, real).mean(1) for f in fake.split(chunk)])  # (N,) mean_r k(f_i, r)
        self.k_ff = poly_kernel(fake, fake)                                               # (N, N)
        self.n = len(fake)

    def __call__(self, counts: torch.Tensor) -> torch.Tensor:
        """counts: (B, N) how often each generated row is drawn (rows sum to N) -> (B,) MMD^2."""
        c = counts.double()
        sq = c.square().sum(1)
        ff = ((c @ self.k_ff) * c).sum(1) - (c.square() * torch.diagonal(self.k_ff)).sum(1)
        return self.real_term + ff / (self.n ** 2 - sq) - 2 * (c @ self.cross) / self.n


def bootstrap_indices(n: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, n) row indices drawn with replacement from a generator seeded with ``seed``."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def centred_percentile_interval(point: float, replicates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the bootstrap replicates shifted by the bootstrap bias (mean - point).

    A plug-in FID on a resample (about 63% distinct rows) carries roughly the extra small-sample bias
    the FID estimate itself carries; on evaluator-like features (d = 128, N = 1000) it sat +1.2 above the
    point estimate with a 95% spread of 0.4, so raw percentiles exclude the reported FID. Removing the
    bootstrap's bias estimate keeps the width (the sampling spread at this N, which is what separates
    policies evaluated at the same N) and centres the interval on the reported value.
    """
    replicates = replicates.double()
    replicates = replicates[replicates.isfinite()]  # a resample of one repeated row has no distinct pairs (tiny N)
    shifted = replicates - (replicates.mean() - point)
    q = torch.quantile(shifted, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


def quality_intervals(real: torch.Tensor, fake: torch.Tensor, *, resamples: int, seed: int,
                      level: float = 0.95, batch: int = 25) -> dict[str, Any]:
    """FID and KID (unbiased full-set MMD^2) with 95% bootstrap intervals over the generated rows.

    real: (M, d), fake: (N, d) features, each extracted once; the real set is fixed (its mean, covariance
    and kernel sums are computed once). Both statistics see the same ``resamples`` index draws from ``seed``.
    """
    frechet, kernel = FrechetToReal(real), KernelToReal(real, fake)
    fake64, n = fake.double(), len(fake)
    idx = bootstrap_indices(n, resamples, seed)
    fid_b = torch.cat([frechet(fake64[i]) for i in idx.split(batch)])                    # (B,)
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    kid_b = kernel(counts)                                                                # (B,)
    fid_point = float(frechet(fake64))
    kid_point = float(kernel(torch.ones(1, n, dtype=torch.float64))[0])
    return {
        "fid_ci95": list(centred_percentile_interval(fid_point, fid_b, level)),
        "fid_bootstrap_bias": float(fid_b[fid_b.isfinite()].mean()) - fid_point,
        "kid_unbiased": kid_point,
        "kid_ci95": list(centred_percentile_interval(kid_point, kid_b, level)),
        "kid_bootstrap_bias": float(kid_b[kid_b.isfinite()].mean()) - kid_point,
        "bootstrap": resamples,
    }


# ----------------------------------------------------------------------------------------------
# k-NN manifold precision / recall and per-sample distances
# ----------------------------------------------------------------------------------------------

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
