"""Compute cost: FLOPs of one forward pass measured with ``torch.utils.flop_counter`` (GFLOPs as in
McAllister et al. Table 1), turned into GFLOPs per generated image from the evaluation counters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddmbench.data.shapes import ImageShape, image_shape_of


@torch.no_grad()
def flops_per_image(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int = 8,
                    image_shape: ImageShape | None = None) -> float:
    """FLOPs of one forward pass on one image of ``image_shape`` (C, H, W) at some t (the count does not
    depend on t); by default the shape the model was built for (1x28x28 for a callable that does not say)."""
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    device = params[0].device if params else torch.device("cpu")
    x = torch.zeros(batch, *(image_shape or image_shape_of(model)), device=device)
    t = torch.full((batch,), 0.5, device=device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):   # attention as counted matmuls
        model(x, t)
    return counter.get_total_flops() / batch


def gflops_per_image(expert_evals: Sequence[float], expert_flops: Sequence[float], router_evals: float,
                     router_flops: float, images: int = 1) -> float:
    """GFLOPs per image from the evaluation counts over ``images`` images: each expert's evaluations at its own
    FLOPs (experts of one DDM may differ in architecture; those of equal cost are counted together), plus the
    router's."""
    if len(expert_evals) != len(expert_flops):
        raise ValueError(f"{len(expert_evals)} experts' evaluation counts but {len(expert_flops)} FLOP counts")
    evals_at: dict[float, float] = {}
    for evals, flops in zip(expert_evals, expert_flops):
        evals_at[flops] = evals_at.get(flops, 0) + evals
    experts = sum(evals / images * flops for flops, evals in evals_at.items())
    return (experts + router_evals / images * router_flops) / 1e9
