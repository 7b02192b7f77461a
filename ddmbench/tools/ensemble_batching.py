"""The dense ensemble's K experts on the same rows: today's loop (one call per expert) against one batched call
(``torch.func.stack_module_state`` + ``vmap``) and against ``torch.compile`` (inductor) of each expert, side by
side in one process (issue 16 item 3: measure, keep what wins).

The loop is what :class:`ddmbench.sampling.field.RoutedField` runs. The batched call computes the same K
velocities (up to float rounding: vmap turns the K convolutions into one grouped convolution, another
kernel), so adopting it would move every dense policy's samples off today's float path. Compile time is
reported on its own and as the number of calls it takes to pay for itself, so that it can be counted in a
stage's wall time.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call, stack_module_state

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.models.nets import build_velocity_net

Velocities = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def looped(experts: Sequence[torch.nn.Module]) -> Velocities:
    """(x (B, C, H, W), t (B,)) -> (K, B, C, H, W): one call per expert, as the routed field runs them."""
    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x, t) for expert in experts])
    return call


def batched(experts: Sequence[torch.nn.Module]) -> Velocities:
    """Same signature and result as :func:`looped`, as one vmapped call over the experts' stacked weights (the
    experts must share one architecture)."""
    params, buffers = stack_module_state(list(experts))
    skeleton = copy.deepcopy(experts[0]).to("meta")

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x, t))

    over_experts = torch.vmap(one, in_dims=(0, 0, None, None))

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return over_experts(params, buffers, x, t)
    return call


def compiled(experts: Sequence[torch.nn.Module]) -> Velocities:
    """:func:`looped` over ``torch.compile``d copies of the experts (inductor; compiles on the first call)."""
    return looped([torch.compile(copy.deepcopy(expert)) for expert in experts])


def measure(num_experts: int = 8, preset: str = "unet-xs", rows: int = 64, repeats: int = 5, *,
            with_compile: bool = False, image_shape: ImageShape = MNIST_SHAPE, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Median ms per dense evaluation (K experts on ``rows`` rows) of each variant, timed interleaved; the ratio
    of each to the loop (< 1: faster); the largest |difference| from the loop's velocities; for compile, the
    first call's seconds (compilation) and the calls needed to pay for it."""
    torch.manual_seed(seed)
    experts = [build_velocity_net(preset, image_shape).eval() for _ in range(num_experts)]
    x = torch.randn(rows, *image_shape)
    t = torch.rand(rows)
    variants: dict[str, Velocities] = {"loop": looped(experts), "vmap": batched(experts)}
    first_call_s: dict[str, float] = {}
    with torch.no_grad():
        reference = variants["loop"](x, t)
        if with_compile:
            if progress:
                progress(f"compiling {num_experts} {preset} experts")
            variants["compile"] = compiled(experts)
            start = time.perf_counter()
            variants["compile"](x, t)
            first_call_s["compile"] = time.perf_counter() - start
        diffs = {name: float((fn(x, t) - reference).abs().max()) for name, fn in variants.items()}  # also warm-up
        walls: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(repeats):                       # interleaved, so a load change hits every variant alike
            if progress:
                progress(f"dense ensemble of {num_experts} {preset}: repeat {r + 1}/{repeats}")
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x, t)
                walls[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    loop_s = medians["loop"]
    out: dict[str, Any] = {"experts": num_experts, "net": preset, "rows": rows, "repeats": repeats,
                           "threads": torch.get_num_threads(), "ms": {k: v * 1e3 for k, v in medians.items()},
                           "ratio_to_loop": {k: v / loop_s for k, v in medians.items() if k != "loop"},
                           "max_abs_diff_from_loop": {k: v for k, v in diffs.items() if k != "loop"}}
    if "compile" in first_call_s:
        saved = loop_s - medians["compile"]
        out["compile_seconds"] = first_call_s["compile"]
        out["compile_pays_after_calls"] = first_call_s["compile"] / saved if saved > 0 else None
    return out
