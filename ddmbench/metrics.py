"""Sample quality in the evaluator's feature space: FID and KID (torchmetrics), confidence and class entropy.

Inception weights cannot be downloaded offline and mean little for 28x28 digits, so the trained
evaluator classifier's penultimate layer is the feature extractor (``num_features`` set, eval mode,
frozen, never in an optimizer).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ddmbench.nets import Classifier

warnings.filterwarnings("ignore", message=r".*will save all extracted features in buffer.*")


@torch.no_grad()
def extract_features(classifier: Classifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, 1, 28, 28) images in [-1, 1] -> (N, num_features) evaluator features (eval mode, no grad)."""
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
def classifier_stats(classifier: Classifier, images: torch.Tensor, num_classes: int = 10) -> dict[str, float]:
    """Mean max-softmax confidence and the entropy (nats) of the predicted-class histogram (mode collapse lowers it)."""
    probs = torch.cat([torch.softmax(classifier(chunk), dim=1) for chunk in images.split(1000)])
    hist = torch.bincount(probs.argmax(1), minlength=num_classes).double() / len(images)
    nz = hist[hist > 0]
    entropy = float(-(nz * nz.log()).sum())
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": entropy,
            "class_entropy_max": math.log(num_classes)}
