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


class EvaluatorFeatures(nn.Module):
    """(B, 1, 28, 28) float images in [-1, 1] -> (B, num_features) evaluator features."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())


def fid_kid(classifier: Classifier, real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int,
            kid_subsets: int, seed: int) -> dict[str, float]:
    """FID and KID (mean, std) between real and generated images, both (N, 1, 28, 28) in [-1, 1]."""
    extractor = EvaluatorFeatures(classifier)
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, input_img_size=(1, 28, 28))
    subset = min(kid_subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=extractor, subsets=kid_subsets, subset_size=subset, normalize=True)
    for chunk in real.split(1000):
        fid.update(chunk, real=True)
        kid.update(chunk, real=True)
    for chunk in fake.split(1000):
        fid.update(chunk, real=False)
        kid.update(chunk, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID draws its subsets with torch.randperm
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


@torch.no_grad()
def classifier_stats(classifier: Classifier, images: torch.Tensor, num_classes: int = 10) -> dict[str, float]:
    """Mean max-softmax confidence and the entropy (nats) of the predicted-class histogram (mode collapse lowers it)."""
    probs = torch.cat([torch.softmax(classifier(chunk), dim=1) for chunk in images.split(1000)])
    hist = torch.bincount(probs.argmax(1), minlength=num_classes).double() / len(images)
    nz = hist[hist > 0]
    entropy = float(-(nz * nz.log()).sum())
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": entropy,
            "class_entropy_max": math.log(num_classes)}
