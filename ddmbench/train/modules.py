"""LightningModules: training logic only. Networks are injected; one ``model_step`` serves every split."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from ddmbench.errors import TrainingError
from ddmbench.sampling import flow
from ddmbench.streams import step_seed


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; ``training.fit`` turns it into the stage's one-line error."""

    def __init__(self, message: str, step: int, value: float) -> None:
        super().__init__(message)
        self.step, self.value = step, value


class _Base(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float, weight_decay: float, seed: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed                            # None: torch.initial_seed() when training starts
        self.noise: torch.Generator | None = None   # re-seeded at every step, see training_pair

    def on_train_start(self) -> None:
        if self.seed is None:
            self.seed = torch.initial_seed()
        self.noise = torch.Generator(device=self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_pair(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for this rank's rows x0 (B, C, H, W) of the step's global batch.

        Every rank seeds the same generator from (seed, step) and keeps its own rows of the global draw, so
        the noise of a sample depends on (seed, step, row of the global batch) only: not on the number of
        processes, and not on whether the run was resumed."""
        world = self._trainer.world_size if self._trainer is not None else 1
        if self.noise is not None:
            self.noise.manual_seed(step_seed(int(self.seed or 0), self.global_step))
        return flow.sample_training_pair(x0, generator=self.noise, shard=(self.global_rank, world))

    def _check_finite(self, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None:  # under DDP every rank must stop together, not hang in the all-reduce
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            value = float(loss.detach())
            raise NonFiniteLoss(f"{type(self).__name__}: loss became {value} at step {self.global_step}; "
                                "lower the learning rate (the weights before this step are kept)",
                                self.global_step, value)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss, extra = self.model_step(batch)
        self._check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        for key, value in extra.items():
            self.log(f"train/{key}", value, sync_dist=True)
        return loss

    def model_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class FlowMatching(_Base):
    """Rectified-flow velocity regression: loss = ||v_theta(x_t, t) - (eps - x_0)||^2."""

    def model_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch[0]                                          # (B, C, H, W)
        x_t, t, target = self.training_pair(x0)
        loss = nn.functional.mse_loss(self.net(x_t, t), target)
        return loss, {}


class RouterTraining(_Base):
    """Cross-entropy of the router on noisy x_t (t ~ U(0, 1)) against the cluster of x_0."""

    def model_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, cluster = batch[0], batch[1]
        x_t, t, _ = self.training_pair(x0)
        logits = self.net(x_t, t)                              # (B, K)
        loss = nn.functional.cross_entropy(logits, cluster)
        return loss, {"acc": (logits.argmax(1) == cluster).float().mean()}


class ClassifierTraining(_Base):
    """Digit classification for the evaluator (its features serve FID/KID)."""

    def model_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean()}


class WarmupEMA:
    """EMA update for ``AveragedModel`` whose decay warms up with the number of updates n:
    decay_n = min(decay, (1 + n) / (10 + n)). Short CPU runs thus end close to the trained weights
    instead of ~60% initial noise (0.999^500 ≈ 0.61 with a fixed decay)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        d = self.decay_at(int(num_averaged))
        return d * averaged + (1.0 - d) * current


def ema_callback(decay: float) -> L.Callback:
    """Lightning's ``WeightAveraging`` with the warm-up EMA; at the end of fit the EMA weights are copied into the model."""
    from lightning.pytorch.callbacks import WeightAveraging

    return WeightAveraging(avg_fn=WarmupEMA(decay), use_buffers=True)

