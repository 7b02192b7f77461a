"""The standard feature spaces a profile asks for (``evaluate.feature_spaces`` beyond the classifier), shared by
the `features` and `evaluate` stages: where each one's weights file is, the digest it must have, and the network.

A space whose weights file is absent is skipped with one line that says where the file goes; a file that is
present but wrong (digest, format, architecture) stops the stage with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError
from ddmbench.evaluation.feature_spaces import LABEL, METRIC, load_dinov2, load_inception, space_features
from ddmbench.evaluation.weights_files import default_weights, expected_sha256
from ddmbench.pipeline.paths import Paths


@dataclass(frozen=True)
class Space:
    name: str        # inception | dinov2
    weights: Path    # the local weights file (exists)
    sha256: str      # the digest it must have (pinned, or evaluate.weights_sha256.<name>)
    arch: str        # the network (timm name for dinov2)

    @property
    def metric(self) -> str:
        return METRIC[self.name]

    @property
    def label(self) -> str:
        return LABEL[self.name]

    def record(self, num_features: int) -> dict[str, Any]:
        """What the metrics say about the space a distance was measured in."""
        return {"metric": self.metric, "weights_sha256": self.sha256, "arch": self.arch, "num_features": num_features}


def extra_spaces(cfg: Config, paths: Paths) -> list[Space]:
    """The spaces other than the classifier that ``cfg`` lists and whose weights file exists; one line per
    skipped space. ArtifactError when a weights path exists but is not a file."""
    ev = cfg.evaluate
    out = []
    for name in ev.feature_spaces:
        if name == "classifier":
            continue
        arch = ev.dinov2_arch if name == "dinov2" else "inception-v3-compat"
        given = ev.dinov2_weights if name == "dinov2" else ev.inception_weights
        rel = given or default_weights(name, ev.dinov2_arch)
        path = Path(rel) if Path(rel).is_absolute() else paths.root / rel
        if not path.exists():
            console.print(f"{name} feature space skipped: no weights file at {rel} (put the file there, "
                          f"or set evaluate.{name}_weights; docs/feature-spaces.md)", soft_wrap=True, markup=False)
            continue
        if not path.is_file():
            raise ArtifactError(f"evaluate.{name}_weights: {rel} is not a file; name the {name} weights file")
        out.append(Space(name, path, expected_sha256(name, getattr(ev.weights_sha256, name)), arch))
    return out


def load_space(space: Space) -> nn.Module:
    """The feature network of ``space``, from its verified weights file."""
    if space.name == "inception":
        return load_inception(space.weights, space.sha256)
    return load_dinov2(space.weights, space.sha256, space.arch)


def features_of(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> (N, d) features, on the GPU when there is one."""
    return space_features(net, images, device="cuda" if torch.cuda.is_available() else "cpu")
