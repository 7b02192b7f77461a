"""Training throughput: one expert under our Lightning fit path vs a plain PyTorch loop, side by side.

Both paths train the same network preset from the same initial weights on the same in-memory tensors
with the same batches (``train_loader``), the same noise draws (``flow.sample_training_pair`` seeded per
step), AdamW with the same settings and the same EMA update (``AveragedModel`` + ``WarmupEMA``). The
Lightning side is ``training.build_trainer`` with the modules and callbacks ``fit`` uses (EMA, data
alignment, progress bar, the non-finite-loss check) but without the MLflow logger and the resume
checkpoints, whose cost depends on the tracking store and the disk. Runs are interleaved (the order
alternates per repeat) and each path's median steps/s over ``repeats`` is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.optim.swa_utils import AveragedModel

from ddmbench.config import parse_config
from ddmbench.data.datasets import shape_of_images
from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.models import nets
from ddmbench.sampling import flow
from ddmbench.train.modules import FlowMatching, WarmupEMA, ema_callback, step_seed
from ddmbench.train.trainer import AlignData, build_trainer, compiled, train_loader

SEED = 0
LR, EMA_DECAY = 2e-3, 0.999


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_data(n: int, seed: int = SEED, image_shape: ImageShape = MNIST_SHAPE) -> torch.Tensor:
    """(n, C, H, W) images of ``image_shape`` in model space [-1, 1]; the timing does not depend on their
    content."""
    return torch.rand(n, *image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class _Timer(L.Callback):
    """Wall time from the start of optimizer step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == trainer.max_steps:
            _sync(self.device)
            self.end = time.perf_counter()


def lightning_steps_per_s(net_name: str, images: torch.Tensor, batch: int, steps: int, warmup: int, device: str,
                          precision: str, compile: bool) -> tuple[float, torch.nn.Module]:
    """(steps/s, the trained net holding its EMA weights)."""
    cfg = parse_config({"trainer": {"accelerator": "gpu" if device == "cuda" else "cpu", "precision": precision,
                                    "compile": compile}, "tracking": {"enabled": False}})
    torch.manual_seed(SEED)
    net = nets.build_velocity_net(net_name, shape_of_images(images))
    module = FlowMatching(net, lr=LR, weight_decay=0.0, seed=SEED)
    loader = train_loader((images,), batch, SEED)
    timer = _Timer(warmup, device)
    trainer = build_trainer(cfg, max_steps=warmup + steps, callbacks=[ema_callback(EMA_DECAY), AlignData(loader.sampler),
                                                                       timer])
    with compiled(net, compile):
        trainer.fit(module, train_dataloaders=loader)
    return steps / (timer.end - timer.start), net


def plain_steps_per_s(net_name: str, images: torch.Tensor, batch: int, steps: int, warmup: int, device: str,
                      precision: str, compile: bool) -> tuple[float, torch.nn.Module]:
    """(steps/s, the EMA copy of the trained net)."""
    torch.manual_seed(SEED)
    net = nets.build_velocity_net(net_name, shape_of_images(images)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
    ema = AveragedModel(net, avg_fn=WarmupEMA(EMA_DECAY), use_buffers=True)
    gen = torch.Generator(device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    net.train()
    with compiled(net, compile):
        rate = _plain_loop(net, opt, ema, gen, autocast, images, batch, steps, warmup, device)
    return rate, ema.module


def _plain_loop(net: torch.nn.Module, opt: torch.optim.Optimizer, ema: AveragedModel, gen: torch.Generator,
                autocast: torch.autocast, images: torch.Tensor, batch: int, steps: int, warmup: int, device: str
                ) -> float:
    start = 0.0
    for step, (x0,) in zip(range(warmup + steps), train_loader((images,), batch, SEED)):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        x0 = x0.to(device, non_blocking=True)
        gen.manual_seed(step_seed(SEED, step))
        with autocast:
            x_t, t, target = flow.sample_training_pair(x0, generator=gen)
            loss = torch.nn.functional.mse_loss(net(x_t, t), target)
        if not torch.isfinite(loss):  # the same per-step check (and device sync) the Lightning path does
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(net)
    _sync(device)
    return steps / (time.perf_counter() - start)


def time_training(net_name: str, batch: int, steps: int, warmup: int, repeats: int, device: str = "cpu",
                  precision: str = "32-true", compile: bool = False, n_images: int = 4096,
                  progress: Callable[[str], None] | None = None, image_shape: ImageShape = MNIST_SHAPE
                  ) -> dict[str, Any]:
    """Median steps/s of both paths over interleaved repeats and their ratio (Lightning / plain), training on
    random images of ``image_shape`` (C, H, W) (the dataset's)."""
    images = bench_data(n_images, image_shape=image_shape)
    runs: dict[str, list[float]] = {"lightning": [], "plain": []}
    paths = {"lightning": lightning_steps_per_s, "plain": plain_steps_per_s}
    for r in range(repeats):
        for name in (("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")):
            if progress:
                progress(f"repeat {r + 1}/{repeats}: {name}")
            runs[name].append(paths[name](net_name, images, batch, steps, warmup, device, precision, compile)[0])
    median = {name: statistics.median(v) for name, v in runs.items()}
    return {"net": net_name, "batch": batch, "steps": steps, "warmup": warmup, "repeats": repeats, "device": device,
            "precision": precision, "compile": compile, "n_images": n_images, "image_shape": list(image_shape),
            "threads": torch.get_num_threads(),
            "steps_per_s": runs, "median_steps_per_s": median,
            "images_per_s": {name: v * batch for name, v in median.items()},
            "ratio": median["lightning"] / median["plain"], "target": 0.95,
            "lightning_path": "build_trainer + FlowMatching + EMA + data alignment + progress bar; "
                              "no MLflow logger, no resume checkpoints"}
