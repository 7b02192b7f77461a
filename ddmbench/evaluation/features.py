"""The evaluator's feature space: features and class probabilities of images, and the real set's features,
extracted once per (dataset, split, evaluator digest) by the `features` stage and read by every stage that
scores samples (evaluate, analyze, contrast, separation).

Inception weights cannot be downloaded offline and mean little for 28x28 digits, so the trained evaluator
classifier's penultimate layer is the feature extractor (``num_features`` set, eval mode, frozen, never in an
optimizer).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddmbench.errors import ArtifactError
from ddmbench.io import load_tensors, save_tensors
from ddmbench.models.nets import Classifier


@torch.no_grad()
def extract_features(classifier: Classifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, num_features) evaluator features (eval mode, no grad)."""
    classifier.eval()
    return torch.cat([classifier.features(chunk.float()) for chunk in images.split(batch)])


@torch.no_grad()
def classification_accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000
                            ) -> float:
    """Fraction of images (N, C, H, W) in [-1, 1] whose argmax logit is their label (N,)."""
    classifier.eval()
    correct = sum(int((classifier(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch)))
    return correct / max(1, len(images))


class Precomputed(nn.Module):
    """The feature extractor torchmetrics sees: features are extracted once with :func:`extract_features`
    and passed through unchanged, so real and generated sets are never pushed through the net twice."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats


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


def save_real_features(path: Path, features: torch.Tensor, *, evaluator_sha256: str, dataset: str,
                       split: str, spaces: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the real set's (M, d) features with the digest of the evaluator that extracted them, and those of
    the other feature spaces ({space: {"features": (M, d_s), "weights_sha256": ..., ...}}), if any."""
    blob = {"features": features.float(), "evaluator_sha256": evaluator_sha256, "dataset": dataset, "split": split}
    if spaces:  # absent when there are none: a classifier-only file stays byte for byte what it was
        blob["spaces"] = {name: {**entry, "features": entry["features"].float()} for name, entry in spaces.items()}
    save_tensors(path, blob)


def load_real_features(path: Path, *, evaluator_sha256: str | None = None, dataset: str | None = None,
                       what: str = "ddmbench features") -> tuple[torch.Tensor, str]:
    """(M, d) real features and the evaluator digest they were extracted with. ArtifactError when the file is
    missing or malformed, or was made by another evaluator or from another dataset than the ones given."""
    blob = load_tensors(path, what)
    if not isinstance(blob, dict) or not isinstance(blob.get("features"), torch.Tensor) \
            or not isinstance(blob.get("evaluator_sha256"), str):
        raise ArtifactError(f"{path} holds no real-set features with an evaluator digest; re-run `{what}`")
    if evaluator_sha256 is not None and blob["evaluator_sha256"] != evaluator_sha256:
        raise ArtifactError(f"{path} was extracted by evaluator {blob['evaluator_sha256'][:12]} but the current "
                            f"evaluator is {evaluator_sha256[:12]}; re-run `{what}`")
    if dataset is not None and blob.get("dataset") != dataset:
        raise ArtifactError(f"{path} holds features of {blob.get('dataset')!r}, not of {dataset!r}; re-run `{what}`")
    return blob["features"], blob["evaluator_sha256"]


def load_space_features(path: Path, space: str, *, weights_sha256: str, what: str = "ddmbench features"
                        ) -> torch.Tensor:
    """(M, d) real features of another feature space (``space``), extracted with the weights of ``weights_sha256``;
    ArtifactError when the file holds none (the space was skipped or added since) or holds another weights'."""
    blob = load_tensors(path, what)
    entry = (blob.get("spaces") or {}).get(space) if isinstance(blob, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("features"), torch.Tensor):
        raise ArtifactError(f"{path} holds no {space} features; re-run `{what}` now that the {space} weights are in "
                            "place (`dvc repro --force features`: DVC does not track the weights files)")
    if entry.get("weights_sha256") != weights_sha256:
        raise ArtifactError(f"{path} holds {space} features of weights {str(entry.get('weights_sha256'))[:12]}, not of "
                            f"{weights_sha256[:12]}; re-run `{what}`")
    return entry["features"]
