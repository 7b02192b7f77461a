"""Roofline of `ddmbench bench`: this machine's matmul peak (fp32 and bf16) and each hot path against it.

The peak is a large square matmul (``size`` x ``size``, 2·size³ FLOPs), the best a dense kernel reaches
here. Each hot path (an expert's training step, the router's step, an expert forward at the sampling chunk
size, the per-expert accuracy pass) is timed side by side in the same run, its FLOPs counted once with
``torch.utils.flop_counter`` (a backward pass counts its own FLOPs), and reported as achieved GFLOP/s and as
a fraction of each peak. bf16 rows run under CPU/GPU autocast, the way ``trainer.precision: bf16-mixed``
trains (a forward through sampling's own wrapper, its weights cast once). They are measured on every
machine; ``bf16_native`` says whether the hardware has native bf16 (see ``ddmbench.hardware``) — without it
bf16 is emulated, which is why ddmbench refuses bf16 there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.hardware import cpu_has_bf16
from ddmbench.models import nets
from ddmbench.models.precision import at_precision
from ddmbench.sampling import flow

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Row:
    """One hot path at one precision: median wall time per call and what it achieved."""

    path: str
    dtype: str
    rows: int                 # images per call
    ms: float                 # median wall time per call
    gflop: float              # FLOPs per call / 1e9
    gflops_per_s: float
    fraction_of_fp32_peak: float
    fraction_of_bf16_peak: float


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int, device: str = "cpu", warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (forward and, if it runs one, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` (fp32 | bf16), median of ``repeats``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(size, size, generator=g).to(device=device, dtype=DTYPES[dtype])
    seconds = median_seconds(lambda: a @ b, repeats, device)
    return 2 * size**3 / seconds / 1e9


def bf16_available(device: str) -> bool:
    return cpu_has_bf16() if device == "cpu" else torch.cuda.is_bf16_supported()


def _autocast(dtype: str, device: str) -> Any:
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")


def _forward(net: torch.nn.Module, rows: int, image_shape: ImageShape, dtype: str, device: str) -> Callable[[], Any]:
    """One forward of ``rows`` rows as sampling runs it: bf16 through the same :class:`Autocast` wrapper
    (weights cast once when wrapped, float32 output) that ``sample.precision: bf16-mixed`` builds."""
    x = torch.randn(rows, *image_shape, device=device)
    t = torch.rand(rows, device=device)
    wrapped = at_precision(net, "bf16-mixed" if dtype == "bf16" else "32-true")

    @torch.no_grad()
    def call() -> Any:
        return wrapped(x, t)
    return call


def _train_step(net: torch.nn.Module, batch: int, image_shape: ImageShape, dtype: str, device: str,
                classify: int | None = None) -> Callable[[], Any]:
    """One AdamW step of the flow-matching loss (velocity nets) or cross-entropy (``classify`` = classes)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, *image_shape, generator=g).to(device) * 2 - 1
    noise = torch.randn(batch, *image_shape, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    labels = torch.randint(0, classify or 1, (batch,), generator=g).to(device)

    def step() -> None:
        with _autocast(dtype, device):
            x_t = flow.interpolate(x0, noise, t)
            out = net(x_t, t)
            if classify is None:
                loss = torch.mean((out.float() - flow.velocity_target(x0, noise)) ** 2)
            else:
                loss = torch.nn.functional.cross_entropy(out.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def hot_paths(*, nets_to_time: tuple[str, ...] = ("unet-xs", "unet-s", "dit-xs"), chunk_rows: int = 64,
              batch: int = 128, accuracy_rows: int = 500, num_experts: int = 8, device: str = "cpu",
              image_shape: ImageShape = MNIST_SHAPE) -> list[tuple[str, int, Callable[[], Any], Callable[[], Any]]]:
    """The hot paths as (name, rows, fp32 call, bf16 call); every call builds nothing (timing only)."""
    torch.manual_seed(0)
    paths: list[tuple[str, int, Callable[[], Any], Callable[[], Any]]] = []
    for preset in nets_to_time:
        net = nets.build_velocity_net(preset, image_shape).to(device).eval()
        paths.append((f"{preset} expert forward, sampling chunk", chunk_rows,
                      _forward(net, chunk_rows, image_shape, "fp32", device),
                      _forward(net, chunk_rows, image_shape, "bf16", device)))
    for preset in nets_to_time:
        fp32_net = nets.build_velocity_net(preset, image_shape).to(device).train()
        bf16_net = nets.build_velocity_net(preset, image_shape).to(device).train()
        paths.append((f"{preset} expert train step", batch, _train_step(fp32_net, batch, image_shape, "fp32", device),
                      _train_step(bf16_net, batch, image_shape, "bf16", device)))
    router = [nets.build_router("router-s", num_experts, image_shape).to(device).train() for _ in range(2)]
    paths.append(("router train step", batch,
                  _train_step(router[0], batch, image_shape, "fp32", device, classify=num_experts),
                  _train_step(router[1], batch, image_shape, "bf16", device, classify=num_experts)))
    expert = nets.build_velocity_net(nets_to_time[0], image_shape).to(device).eval()
    paths.append((f"{nets_to_time[0]} per-expert accuracy pass (one t, one expert)", accuracy_rows,
                  _forward(expert, accuracy_rows, image_shape, "fp32", device),
                  _forward(expert, accuracy_rows, image_shape, "bf16", device)))
    return paths


def roofline(*, repeats: int = 3, matmul_size: int = 2048, device: str = "cpu", image_shape: ImageShape = MNIST_SHAPE,
             nets_to_time: tuple[str, ...] = ("unet-xs", "unet-s", "dit-xs"), chunk_rows: int = 64, batch: int = 128,
             accuracy_rows: int = 500, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Peaks and hot-path rows, measured in one run (fp32 and bf16 of one path back to back)."""
    say = progress or (lambda _: None)
    say("matmul peak")
    peak: dict[str, float | None] = {"fp32": matmul_peak("fp32", matmul_size, repeats + 2, device),
                                     "bf16": matmul_peak("bf16", matmul_size, repeats + 2, device)}
    rows: list[Row] = []
    for name, n, fp32_call, bf16_call in hot_paths(nets_to_time=nets_to_time, chunk_rows=chunk_rows, batch=batch,
                                                    accuracy_rows=accuracy_rows, device=device, image_shape=image_shape):
        for dtype, call in (("fp32", fp32_call), ("bf16", bf16_call)):
            say(f"{name} ({dtype})")
            flops = count_flops(call)
            seconds = median_seconds(call, repeats, device)
            achieved = flops / seconds / 1e9
            rows.append(Row(name, dtype, n, seconds * 1e3, flops / 1e9, achieved, achieved / peak["fp32"],
                            achieved / peak["bf16"]))
    return {"device": device, "matmul_size": matmul_size, "peak_gflops_per_s": peak, "bf16_native": bf16_available(device),
            "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]}


def sampling_rows(timing: dict[str, Any], expert_gflop: float, router_gflop: float,
                  peak: dict[str, float | None]) -> list[dict[str, Any]]:
    """Achieved GFLOP/s of whole sampling runs from `bench`'s side-by-side timing: ``timing["evals"]`` holds
    each policy's (expert evaluations, router evaluations) for one timed run, ``timing["median_s"]`` its wall."""
    out = []
    for label, (expert_evals, router_evals) in timing["evals"].items():
        gflop = expert_evals * expert_gflop + router_evals * router_gflop
        achieved = gflop / timing["median_s"][label]
        out.append({"path": f"sampling {label}", "dtype": "fp32", "gflop": gflop, "gflops_per_s": achieved,
                    "fraction_of_fp32_peak": achieved / peak["fp32"],
                    "fraction_of_bf16_peak": achieved / peak["bf16"] if peak.get("bf16") else None})
    return out
