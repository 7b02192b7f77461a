"""The example's router: a small CNN (x_t, t) → K logits, the user's own class rather than a diffusers one.

Its ``config.json`` names it ``"_class_name": "router:build"``; a loader imports the module ``router`` (this file,
with this folder on ``PYTHONPATH``) and calls :func:`build` with the config to get the untrained network, then loads
its safetensors weights. The time input is whatever the DDM's ``ddm.yaml`` declares for the router (here the flow
time t ∈ [0, 1], t = 1 noise), fed as an extra constant image channel and again beside the pooled features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class NoisyImageRouter(nn.Module):
    """(x_t (B, C, H, W), t (B,)) → (B, K) logits scoring which expert's cluster x_t was noised from."""

    def __init__(self, num_experts: int, in_channels: int = 1, channels: tuple[int, ...] = (32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels + 1                                  # the image and a constant channel holding t
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(width + 1, width), nn.SiLU(), nn.Linear(width, num_experts))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1).expand(x.shape[0])
        time_plane = t.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        h = self.features(torch.cat([x, time_plane], dim=1))
        return self.head(torch.cat([h, t[:, None]], dim=1))


def build(config: dict[str, Any]) -> nn.Module:
    """The untrained router a ``config.json`` describes (keys ``num_experts``, ``in_channels``, ``channels``)."""
    return NoisyImageRouter(int(config["num_experts"]), int(config.get("in_channels", 1)),
                            tuple(int(c) for c in config.get("channels", (32, 64))))
