"""Mixed-precision inference: a network run under ``torch.autocast``, its output cast back to float32.

Used by ``sample.precision: bf16-mixed``: the experts and the router compute in bf16 (native on CPUs with
AVX512-BF16 or AMX, and on GPUs) while the ODE state, the routing weights and every sum over experts stay
float32, the way Lightning's bf16-mixed trains.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


class Autocast(nn.Module):
    """``net`` under autocast at ``dtype``; same call signature, float32 outputs, same ``image_shape``."""

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype
        if hasattr(net, "image_shape"):
            self.image_shape = net.image_shape

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        device_type = args[0].device.type
        with torch.autocast(device_type, dtype=self.dtype):
            out = self.net(*args)
        return out.float()


def at_precision(net: nn.Module, precision: str) -> nn.Module:
    """``net`` itself for ``32-true``; wrapped in :class:`Autocast` for a mixed precision."""
    dtype = PRECISIONS[precision]
    return net if dtype is None else Autocast(net, dtype)
