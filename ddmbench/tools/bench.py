"""`ddmbench bench`: sampling cost of routing policies, measured side by side in one run.

K experts of one architecture (random weights: timing does not depend on training), a router whose
logits vary with the input so the load spreads over the experts, batch B, Euler. Each repeat times
every policy once, interleaved, and the median per policy gives the ratios; peak resident memory of
sampling many images with traces off is measured in a fresh subprocess.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.errors import DDMBenchError
from ddmbench.models import nets
from ddmbench.sampling.field import DEFAULT_CHUNK_ROWS, ModelField, RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate

BENCH_POLICIES = ("monolith", "full", "top-2", "top-1", "sample-1")
# (numerator, denominator) -> the largest acceptable ratio of wall times.
TARGETS: dict[tuple[str, str], float] = {
    ("top-2", "full"): 0.30, ("top-1", "full"): 0.17, ("sample-1", "full"): 0.17, ("top-1", "monolith"): 1.15,
}
MEMORY_TARGET_GIB = 2.0


class BenchRouter(torch.nn.Module):
    """The real router's cost, with logits spread by a fixed random projection of the state.

    An untrained router gives nearly the same logits for every input, so Top-1 would send every row to
    one expert; a trained router spreads the load, and so does the projection (its cost is negligible).
    """

    def __init__(self, num_experts: int, seed: int, image_shape: ImageShape = MNIST_SHAPE) -> None:
        super().__init__()
        self.net = nets.build_router("router-s", num_experts, image_shape)
        self.image_shape = tuple(image_shape)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(math.prod(image_shape), num_experts, generator=g))  # (C*H*W, K)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t) + x.flatten(1) @ self.proj  # (B, K)


def build_models(num_experts: int, preset: str, seed: int = 0, device: str = "cpu",
                 image_shape: ImageShape = MNIST_SHAPE) -> tuple[list[torch.nn.Module], torch.nn.Module, torch.nn.Module]:
    """K experts and a monolith of the same architecture, and a router that spreads the load, all for
    images of ``image_shape`` (C, H, W) (the dataset's)."""
    torch.manual_seed(seed)
    experts = [nets.build_velocity_net(preset, image_shape).eval().requires_grad_(False).to(device)
               for _ in range(num_experts)]
    monolith = nets.build_velocity_net(preset, image_shape).eval().requires_grad_(False).to(device)
    router = BenchRouter(num_experts, seed, image_shape).eval().requires_grad_(False).to(device)
    return experts, router, monolith


def make_field(label: str, experts: list[torch.nn.Module], router: torch.nn.Module, monolith: torch.nn.Module,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ModelField | RoutedField:
    spec = parse_policy(label)
    return (ModelField(monolith, chunk_rows) if label == "monolith"
            else RoutedField(experts, router, spec, chunk_rows))


def time_policies(num_experts: int = 8, preset: str = "unet-s", batch: int = 256, nfe_steps: int = 4,
                  repeats: int = 3, progress: Callable[[str], None] | None = None, device: str = "cpu",
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, image_shape: ImageShape = MNIST_SHAPE) -> dict[str, Any]:
    """Median wall time of each policy over interleaved repeats on images of ``image_shape`` and their ratios."""
    experts, router, monolith = build_models(num_experts, preset, device=device, image_shape=image_shape)
    seeds = list(range(batch))
    walls: dict[str, list[float]] = {label: [] for label in BENCH_POLICIES}
    loads: dict[str, list[int]] = {}
    router_loads: dict[str, int] = {}
    for label in BENCH_POLICIES:  # warm-up pass (allocator, kernels), also records each policy's expert load
        field = make_field(label, experts, router, monolith, chunk_rows)
        result = generate(field, seeds, nfe_steps=1, solver="euler", batch_size=batch, device=device)
        loads[label], router_loads[label] = result.expert_evals, result.router_evals
    for r in range(repeats):
        for label in BENCH_POLICIES:
            if progress is not None:
                progress(f"repeat {r + 1}/{repeats}: {label}")
            field = make_field(label, experts, router, monolith, chunk_rows)
            start = time.perf_counter()
            generate(field, seeds, nfe_steps=nfe_steps, solver="euler", batch_size=batch, device=device)
            walls[label].append(time.perf_counter() - start)
    median = {label: statistics.median(w) for label, w in walls.items()}
    ratios = []
    for (num, den), target in TARGETS.items():
        value = median[num] / median[den]
        ratios.append({"ratio": f"wall({num}) / wall({den})", "value": value, "target": target,
                       "pass": value <= target})
    # rows evaluated by experts and by the router in one timed pass (one Euler step's load x steps)
    evals = {label: (sum(loads[label]) * nfe_steps, router_loads[label] * nfe_steps) for label in BENCH_POLICIES}
    return {"walls_s": walls, "median_s": median, "ratios": ratios, "evals": evals,
            "top1_max_expert_share": max(loads["top-1"]) / max(1, sum(loads["top-1"]))}


def memory_probe(num_experts: int, preset: str, n: int, batch: int, nfe_steps: int, label: str,
                 chunk_rows: int, image_shape: ImageShape = MNIST_SHAPE) -> None:
    """Run in a fresh process: sample n images, print peak resident memory (GiB) as JSON."""
    experts, router, monolith = build_models(num_experts, preset, image_shape=image_shape)
    field = make_field(label, experts, router, monolith, chunk_rows)
    out = generate(field, list(range(n)), nfe_steps=nfe_steps, solver="euler", batch_size=batch)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    print(json.dumps({"peak_rss_gib": peak_kib / 2**20, "n": len(out.images)}))


def measure_memory(num_experts: int, preset: str, n: int, batch: int, nfe_steps: int = 1,
                   label: str = "top-2", chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   image_shape: ImageShape = MNIST_SHAPE) -> dict[str, Any]:
    code = (f"from ddmbench.tools.bench import memory_probe; "
            f"memory_probe({num_experts}, {preset!r}, {n}, {batch}, {nfe_steps}, {label!r}, {chunk_rows}, "
            f"{tuple(int(d) for d in image_shape)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DDMBenchError(f"the memory probe failed with exit code {proc.returncode} ({last}); "
                            "try a smaller --memory-n or --batch")
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_gib"]
    return {"policy": label, "n": n, "nfe_steps": nfe_steps, "peak_rss_gib": peak, "target_gib": MEMORY_TARGET_GIB,
            "pass": peak <= MEMORY_TARGET_GIB}
