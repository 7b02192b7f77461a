"""Build a Lightning ``Trainer`` from config and fit a module on in-memory tensors, resumably.

DDP: with ``trainer.devices x trainer.num_nodes > 1`` the strategy is ``ddp`` (gloo on CPU, NCCL on
GPU). ``batch_size`` is per device, so the global batch is batch_size x devices x nodes; the learning
rate is not rescaled (to keep a one-device run's dynamics on W devices, divide batch_size by W). Every
rank gets the same seed (identical initial weights). The step's global batch and its noise are functions
of (seed, step) only: rank r takes rows r·B..(r+1)·B of both (``StepBatches``, ``lit.training_pair``),
so W processes train on exactly the samples and noise of one process with a W× batch.

Resume: every ``trainer.checkpoint_every_n_steps`` steps rank zero writes ``outputs/resume/<stage>/last.ckpt``
(weights, optimizer, EMA, loop state and a fingerprint of the settings). A re-run with the same
fingerprint continues from it; with another fingerprint it starts fresh and says so. The stage removes
the folder once its final weights are written (``FitResult.discard_checkpoints``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from torch.utils.data import DataLoader, Dataset, Sampler

from ddmbench import streams
from ddmbench.config import Config, flatten
from ddmbench.console import bars_enabled, err_console
from ddmbench.errors import ConfigError, TrainingError, first_line
from ddmbench.train.modules import NonFiniteLoss


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
# StepBatches is endless on purpose (max_steps ends training; resume needs no epoch bookkeeping).
warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")

LAST = "last.ckpt"
PROGRESS_EVERY_N_STEPS = 20


@dataclass
class FitResult:
    is_global_zero: bool
    run_id: str | None
    metrics: dict[str, float]
    world_size: int
    resumed_from_step: int = 0
    resume_dir: Path | None = field(default=None, repr=False)

    def discard_checkpoints(self) -> None:
        """Remove the resume folder; call after the final weights are written (rank zero)."""
        if self.is_global_zero and self.resume_dir is not None:
            shutil.rmtree(self.resume_dir, ignore_errors=True)
            with suppress(OSError):  # outputs/resume itself, once no stage has checkpoints left
                self.resume_dir.parent.rmdir()


# ----------------------------------------------------------------------------------------------
# data: whole batches indexed out of tensors in memory
# ----------------------------------------------------------------------------------------------

class _Rows(Dataset):
    """``rows[idx]`` -> the tensors' rows ``idx`` (a LongTensor): one indexing op per batch, no per-item collate."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[idx] for t in self.tensors)


class StepBatches(Sampler[torch.Tensor]):
    """Endless index batches; the batch of optimizer step s is a pure function of (seed, s, rank).

    Epoch e is the permutation ``randperm(n)`` of generator seed·1000003 + e; step s takes global batch
    s mod (n // (B·W)) of that epoch and rank r its rows r·B..(r+1)·B. ``rank`` and ``first_step`` (read
    when iteration begins, after Lightning restored a checkpoint) are set by ``AlignData``, so a resumed
    run continues the same sequence."""

    def __init__(self, n: int, batch_size: int, seed: int, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.world_size = n, batch_size, seed, world_size
        self.rank = 0
        self.first_step: Callable[[], int] = lambda: 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self.first_step()
        epoch, perm = None, torch.empty(0, dtype=torch.long)
        global_batch = self.batch_size * self.world_size
        per_epoch = self.n // global_batch
        while True:
            e, i = divmod(step, per_epoch)
            if e != epoch:  # one permutation per epoch, not per batch
                epoch, perm = e, torch.randperm(self.n, generator=streams.epoch_generator(self.seed, e))
            lo = i * global_batch + self.rank * self.batch_size
            yield perm[lo:lo + self.batch_size]                # (B,) row indices
            step += 1


class AlignData(L.Callback):
    """Point the sampler at this rank, the number of ranks and the step training (re)starts from."""

    def __init__(self, sampler: StepBatches) -> None:
        self.sampler = sampler

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        s = self.sampler
        if s.batch_size * trainer.world_size > s.n:
            raise TrainingError(f"{s.n} training images cannot fill a batch of {s.batch_size} on each of "
                                f"{trainer.world_size} processes; lower the batch size or trainer.devices")
        s.world_size, s.rank = trainer.world_size, trainer.global_rank
        self.sampler.first_step = lambda: trainer.global_step


def train_loader(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, world_size: int = 1,
                 what: str = "training") -> DataLoader:
    """Endless shuffled batches (per rank) from tensors held in memory (no per-item decoding).

    The batch is capped at each rank's share of the data so that every rank gets at least one batch."""
    n = len(tensors[0])
    if n < world_size:
        raise TrainingError(f"{what}: only {n} training images for {world_size} processes; "
                            "lower trainer.devices or give this model more data")
    batch_size = min(batch_size, n // world_size)
    sampler = StepBatches(n, batch_size, seed, world_size)
    return DataLoader(_Rows(tensors), sampler=sampler, batch_size=None)


def _step_sampler(loader: DataLoader) -> StepBatches | None:
    return loader.sampler if isinstance(loader.sampler, StepBatches) else None


# ----------------------------------------------------------------------------------------------
# resume checkpoints
# ----------------------------------------------------------------------------------------------

class ResumeCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(save_last=True, every_n_train_steps=n)`` into the resume folder, plus the settings'
    fingerprint. Never saves at or after max_steps: the final weights are the stage's output, and a
    checkpoint at max_steps would resume into a fit that skips the EMA swap at the end."""

    def __init__(self, dirpath: Path, every_n_steps: int, fingerprint: dict[str, Any]) -> None:
        super().__init__(dirpath=str(dirpath), save_last=True, save_top_k=0, every_n_train_steps=every_n_steps,
                         enable_version_counter=False, save_on_train_epoch_end=False)
        self.fingerprint = fingerprint
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step < trainer.max_steps:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ddmbench"] = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True)}
        self.saved_step = trainer.global_step


def data_digest(tensors: tuple[torch.Tensor, ...]) -> str:
    """SHA-256 of the training tensors, so new clusters or data never resume an old run."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(cfg: Config, run_name: str, max_steps: int, settings: Mapping[str, Any], loader: DataLoader
                 ) -> dict[str, Any]:
    tc = cfg.trainer
    fp: dict[str, Any] = {"stage": run_name, "max_steps": max_steps,
                          **{k.replace("/", "."): v for k, v in flatten(settings).items()},
                          "trainer.world_size": tc.world_size, "trainer.precision": tc.precision,
                          "trainer.compile": tc.compile, "trainer.accelerator": tc.accelerator}
    if isinstance(loader.dataset, _Rows):
        fp["data"] = data_digest(loader.dataset.tensors)
    sampler = _step_sampler(loader)
    if sampler is not None:
        fp["batch_size"], fp["data_seed"] = sampler.batch_size, sampler.seed
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def resume_point(resume_dir: Path, fingerprint: dict[str, Any], run_name: str, max_steps: int) -> tuple[Path | None, int]:
    """(checkpoint to resume from or None, its step). A checkpoint with other settings, or unreadable,
    is not resumed: the run starts fresh, says why, and overwrites it at its first checkpoint."""
    path = resume_dir / LAST
    if not path.exists():
        return None, 0
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = json.loads(ckpt["ddmbench"]["fingerprint"])
        step = int(ckpt["global_step"])
    except Exception as exc:  # torch raises many types for truncated / foreign files
        _say(f"{run_name}: {path} cannot be resumed ({first_line(exc, 120)}); starting fresh")
        return None, 0
    if saved != fingerprint:
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        _say(f"{run_name}: {path} was made with other settings ({', '.join(changed)} changed); "
             "starting fresh instead of resuming")
        return None, 0
    if not 0 < step < max_steps:
        return None, 0
    _say(f"{run_name}: resuming from {path} at step {step} of {max_steps}")
    return path, step


def _say(line: str) -> None:
    from ddmbench.console import is_rank_zero

    if is_rank_zero():
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# progress: optimizer steps, not epochs
# ----------------------------------------------------------------------------------------------

class StepProgressBar(RichProgressBar):
    """Lightning's rich bar counting optimizer steps: `<description> ━━━ i/N elapsed • ETA it/s train/loss`.

    Training is step-based over an endless sampler (``max_epochs=-1``), where the stock bar reads `Epoch 0/-2`
    and counts batches of the current (re)start. Here the total is ``max_steps`` and a resumed run starts at
    the step it resumed from, so i/N and the ETA are those of the whole fit."""

    def __init__(self, description: str = "step", refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.description = description

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps

    def _get_train_description(self, current_epoch: int) -> str:
        return self.description

    def _add_task(self, total_batches: int | float, description: str, visible: bool = True) -> Any:
        assert self.progress is not None
        completed = self.trainer.global_step if total_batches == self.trainer.max_steps else 0
        return self.progress.add_task(description, total=total_batches, completed=completed, visible=visible)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.is_enabled and self.train_progress_bar_id is None:  # a resumed fit may skip the epoch start
            self._initialize_train_progress_bar_id()
        if self.is_enabled and self.train_progress_bar_id is not None and (
                step % self.refresh_rate == 0 or step >= trainer.max_steps):
            self._update(self.train_progress_bar_id, step)
            self._update_metrics(trainer, pl_module)
        self.refresh()


# ----------------------------------------------------------------------------------------------
# trainer and fit
# ----------------------------------------------------------------------------------------------

def build_trainer(cfg: Config, *, max_steps: int, logger: Any = None, callbacks: list[L.Callback] | None = None,
                  default_root_dir: Path | None = None, enable_progress_bar: bool = True,
                  progress_description: str = "step") -> L.Trainer:
    """The Trainer every training stage uses (and ``bench-train`` times); the bar reads
    `<progress_description> i/max_steps` with an ETA."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    tc = cfg.trainer
    callbacks = list(callbacks or [])
    enable_progress_bar = enable_progress_bar and bars_enabled()  # --quiet / CI: no bar in the logs
    if enable_progress_bar:
        # Redrawing the bar every step cost ~10% of a unet-xs step on the CPU (bench-train).
        callbacks.append(StepProgressBar(progress_description, refresh_rate=PROGRESS_EVERY_N_STEPS))
    try:
        return L.Trainer(
            accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
            strategy="ddp" if tc.world_size > 1 else "auto", precision=tc.precision,
            max_steps=max_steps, max_epochs=-1, logger=logger if logger is not None else False,
            callbacks=callbacks, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            enable_model_summary=False, enable_progress_bar=enable_progress_bar,
            log_every_n_steps=min(tc.log_every_n_steps, max_steps),
            default_root_dir=str(default_root_dir) if default_root_dir else None,
            num_sanity_val_steps=0, use_distributed_sampler=False,  # StepBatches shards by rank itself
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        raise ConfigError(f"params.yaml: trainer settings cannot run here ({first_line(exc)}); "
                          "fix trainer.accelerator / devices / precision") from exc


@contextmanager
def compiled(net: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """``trainer.compile``: run ``net.forward`` through torch.compile inside the block only.

    The compiled function is an instance attribute, so parameter names, the state_dict and the saved
    weights are those of the plain net, and the net is plain again afterwards (sampling, held-out loss)."""
    if not enabled:
        yield
        return
    net.forward = torch.compile(net.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del net.forward


def fit(module: L.LightningModule, loader: DataLoader, cfg: Config, *, max_steps: int, run_name: str,
        resume_dir: Path, root_dir: Path, logger: Any = None, callbacks: list[L.Callback] | None = None,
        section: str | None = None, settings: Mapping[str, Any] | None = None) -> FitResult:
    """Fit ``module`` for ``max_steps`` optimizer steps, resuming from ``resume_dir`` when its fingerprint
    (``settings``, trainer, data) matches; returns final logged metrics (rank zero's view).

    root_dir: Lightning's default_root_dir. logger: a Lightning logger or None.
    section: the params section whose lr the divergence error names (e.g. ``expert``)."""
    fingerprint = _fingerprint(cfg, run_name, max_steps, settings or {}, loader)
    ckpt_path, resumed_from = resume_point(resume_dir, fingerprint, run_name, max_steps)
    checkpoint = ResumeCheckpoint(resume_dir, cfg.trainer.checkpoint_every_n_steps, fingerprint)
    sampler = _step_sampler(loader)
    extra = [AlignData(sampler)] if sampler is not None else []
    trainer = build_trainer(cfg, max_steps=max_steps, logger=logger, callbacks=[*(callbacks or []), *extra, checkpoint],
                            default_root_dir=root_dir, progress_description=f"{run_name} step")
    try:
        with compiled(module.net, cfg.trainer.compile):
            trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt_path) if ckpt_path else None,
                        weights_only=True)
    except NonFiniteLoss as exc:
        lr = f"lower {section}.lr (now {getattr(module, 'lr', '?')})" if section else "lower the learning rate"
        kept_step = checkpoint.saved_step or (resumed_from if ckpt_path else None)
        kept = (f"the resume checkpoint of step {kept_step} ({resume_dir / LAST}) is kept" if kept_step
                else "no resume checkpoint was written yet")
        raise TrainingError(f"{run_name}: loss became {exc.value} at step {exc.step}; {lr} and re-run; "
                            f"{kept} and earlier final weights are untouched") from exc
    except TrainingError:
        raise
    except RuntimeError as exc:
        raise TrainingError(f"{run_name}: training failed: {first_line(exc)}") from exc
    if trainer.global_step < max_steps:
        raise TrainingError(f"{run_name}: training stopped after {trainer.global_step} of {max_steps} steps "
                            "(no training batches?); nothing was saved")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    run_id = getattr(logger, "run_id", None) if (logger is not None and trainer.is_global_zero) else None
    return FitResult(trainer.is_global_zero, run_id, metrics, trainer.world_size, resumed_from, resume_dir)


def seed_for(cfg: Config, offset: int) -> int:
    """A distinct, reproducible seed per trained model (offset: 0 evaluator, 1 router, 2 monolith, 10+k expert k;
    ``ddmbench.streams.MODEL_OFFSETS``)."""
    return streams.model_seed(cfg.seed, offset)


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def summarise(result: FitResult, extra: dict[str, Any]) -> dict[str, Any]:
    return {**{k.replace("/", "_"): v for k, v in result.metrics.items()}, **extra, "world_size": result.world_size,
            "resumed_from_step": result.resumed_from_step}
