"""EMA warm-up, the Lightning modules' training logic, and `training.fit` on tiny in-memory problems."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import Project
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from ddmbench.errors import TrainingError
from ddmbench.models import nets
from ddmbench.pipeline.fitting import fit_stage as fit
from ddmbench.train.modules import ClassifierTraining, FlowMatching, RouterTraining, WarmupEMA, ema_callback
from ddmbench.train.trainer import train_loader

# ----------------------------------------------------------------------------------------------
# WarmupEMA
# ----------------------------------------------------------------------------------------------


def test_decay_warms_up_then_caps() -> None:
    ema = WarmupEMA(0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(90) == pytest.approx(91 / 100)
    decays = [ema.decay_at(n) for n in range(20000)]
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert max(decays) == 0.999 and decays[-1] == 0.999
    assert WarmupEMA(0.5).decay_at(1000) == 0.5


def test_warmup_ema_inside_averaged_model_matches_hand_computation() -> None:
    lin = nn.Linear(1, 1, bias=False)
    avg = AveragedModel(lin, avg_fn=WarmupEMA(0.999), use_buffers=True)
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    expected = None
    for n, v in enumerate(values):
        with torch.no_grad():
            lin.weight.fill_(v)
        avg.update_parameters(lin)
        if n == 0:
            expected = v  # the first update copies
        else:
            d = min(0.999, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * v
        assert float(avg.module.weight.detach()) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# ema_callback on a tiny LightningModule
# ----------------------------------------------------------------------------------------------

class Regression(L.LightningModule):
    """Least squares for y = x @ w_true + 1, started far from the solution; keeps a copy of the raw weights."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)
        with torch.no_grad():
            self.lin.weight.fill_(-5.0)
            self.lin.bias.fill_(-5.0)
        self.initial = copy.deepcopy(self.lin.state_dict())
        self.raw: dict[str, torch.Tensor] = {}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.raw = {k: v.detach().clone() for k, v in self.lin.state_dict().items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.3)


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in state.values()])


def _fit_regression(callback: L.Callback, steps: int = 30) -> Regression:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.linspace(-1, 1, 8)[:, None] + 1.0
    module = Regression()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, train_loader((x, y), 32, seed=0))
    return module


@pytest.mark.slow
def test_ema_of_a_short_run_is_close_to_the_trained_weights() -> None:
    module = _fit_regression(ema_callback(0.999))
    init, raw, final = _flat(module.initial), _flat(module.raw), _flat(module.lin.state_dict())
    travelled = float((raw - init).norm())
    assert travelled > 5.0  # the raw weights moved far in 30 steps
    assert float((final - raw).norm()) < 0.2 * travelled
    assert not torch.equal(final, raw)  # and the model now holds the average, not the raw weights


@pytest.mark.slow
def test_fixed_decay_ema_would_stay_near_init() -> None:
    """The failure the warm-up prevents (a fixed 0.999^n keeps the initial weights): proves the test above can fail."""
    from lightning.pytorch.callbacks import WeightAveraging

    module = _fit_regression(WeightAveraging(avg_fn=get_ema_avg_fn(0.999)))
    init, raw, final = _flat(module.initial), _flat(module.raw), _flat(module.lin.state_dict())
    assert float((final - init).norm()) < 0.1 * float((raw - init).norm())


# ----------------------------------------------------------------------------------------------
# modules and fit
# ----------------------------------------------------------------------------------------------

def test_train_loader_clamps_batch_and_is_seeded() -> None:
    x = torch.arange(10).float()
    loader = train_loader((x,), batch_size=64, seed=1)
    assert loader.sampler.batch_size == 10 and sorted(next(iter(loader))[0].tolist()) == x.tolist()
    a = [b[0].tolist() for _, b in zip(range(6), train_loader((x,), 4, seed=3))]
    b = [b[0].tolist() for _, b in zip(range(6), train_loader((x,), 4, seed=3))]
    assert a == b and all(len(batch) == 4 for batch in a)  # endless, whole batches only
    assert len(set(sum(a[:2], []))) == 8  # two batches per epoch, no repeats inside one


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * self.w * torch.nan


def test_nonfinite_loss_raises_training_error() -> None:
    module = FlowMatching(NaNNet(), lr=1e-3, weight_decay=0.0)
    with pytest.raises(TrainingError, match="FlowMatching: loss became nan at step 0; lower the learning rate"):
        module.training_step((torch.zeros(2, 1, 28, 28),), 0)


@pytest.mark.slow
def test_fit_wraps_divergence_and_reports_steps(project: Project) -> None:
    cfg = project.config()
    images = torch.rand(16, 1, 28, 28) * 2 - 1
    module = FlowMatching(NaNNet(), lr=1e-3, weight_decay=0.0)
    with pytest.raises(TrainingError, match="loss became nan"):
        fit(module, train_loader((images,), 8, 0), cfg, project.paths, max_steps=3, run_name="nan", stage="test")

    torch.manual_seed(0)
    net = nets.build_velocity_net("unet-xs")
    result = fit(FlowMatching(net, lr=1e-3, weight_decay=0.0), train_loader((images,), 8, 0), cfg, project.paths,
                 max_steps=3, run_name="ok", stage="test")
    assert result.is_global_zero and result.world_size == 1 and result.run_id is None
    assert set(result.metrics) >= {"train/loss"} and result.metrics["train/loss"] > 0


@pytest.mark.slow
def test_fit_never_reports_success_without_training(project: Project) -> None:
    """A loader with no full batch makes Lightning stop at step 0 ("No training batches"); fit must not
    return as if max_steps were taken (the stage would then save the initial weights as a trained model)."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.zeros(3, 1, 28, 28)), batch_size=4, drop_last=True)
    module = FlowMatching(nets.build_velocity_net("unet-xs"), lr=1e-3, weight_decay=0.0)
    with pytest.raises(TrainingError):
        fit(module, loader, project.config(), project.paths, max_steps=5, run_name="empty", stage="test")


def test_router_and_classifier_steps() -> None:
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    loss, extra = RouterTraining(nets.build_router("router-s", 3), 1e-3, 0.0).model_step((x, torch.tensor([0, 1, 2] * 2)))
    assert loss.ndim == 0 and 0.0 <= float(extra["acc"]) <= 1.0
    loss, extra = ClassifierTraining(nets.build_classifier("classifier-s"), 1e-3, 0.0).model_step((x, torch.arange(6)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float(torch.log(torch.tensor(10.0))), rel=0.2)  # near-uniform at init
