"""Resume: a training stage killed with SIGKILL continues from its last checkpoint and ends exactly where an
uninterrupted run ends; other settings never resume; a NaN loss stops with one line and keeps the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import Project

from ddmbench.errors import TrainingError
from ddmbench.models.checkpoints import load_velocity_net
from ddmbench.pipeline import cluster, prepare, train_expert, train_router
from ddmbench.train.modules import FlowMatching, RouterTraining
from ddmbench.train.trainer import LAST, StepBatches

pytestmark = pytest.mark.slow

STEPS, EVERY = 40, 4


def _ready(project: Project, **params: object) -> None:
    project.update(expert={"steps": STEPS, "batch_size": 8}, trainer={"checkpoint_every_n_steps": EVERY}, **params)
    cfg = project.config()
    prepare.run(cfg, project.paths)
    cluster.run(cfg, project.paths)


def _kill_after_first_checkpoint(project: Project) -> int:
    """Start `ddmbench train-expert --expert 0` in a child, SIGKILL it as soon as a resume checkpoint exists;
    return the step that checkpoint holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    ckpt = project.paths.resume("train-expert@0") / LAST
    child = subprocess.Popen([sys.executable, "-m", "ddmbench", "train-expert", "--expert", "0",
                              "--params", str(project.params)], cwd=project.root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():  # Lightning writes it atomically (fsspec transaction), so it exists whole
            assert child.poll() is None, f"training ended before its first checkpoint: {child.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no resume checkpoint within 240 s"
            time.sleep(0.005)  # polling interval, not synchronisation: the loop waits for the file
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert not project.paths.expert(0).exists()  # killed midway: no final weights
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_killed_expert_resumes_to_the_same_weights_as_an_uninterrupted_run(project: Project, tmp_path) -> None:
    from conftest import make_project

    _ready(project)
    step = _kill_after_first_checkpoint(project)
    assert 0 < step < STEPS and step % EVERY == 0

    resumed = train_expert.run(project.config(), project.paths, 0)
    assert resumed is not None and resumed["resumed_from_step"] == step and resumed["steps"] == STEPS
    assert json.loads(project.paths.expert_metrics(0).read_text())["resumed_from_step"] == step
    assert not project.paths.resume("train-expert@0").parent.exists()  # removed once the final weights were written
    net = load_velocity_net(project.paths.expert(0), "expert", "ddmbench train-expert --expert 0")

    other = make_project(tmp_path / "uninterrupted")
    _ready(other)
    straight = train_expert.run(other.config(), other.paths, 0)
    assert straight is not None and straight["resumed_from_step"] == 0
    reference = load_velocity_net(other.paths.expert(0), "expert", "ddmbench train-expert --expert 0")
    # Same data order, noise, optimizer and EMA state after the resume: bit-identical on the CPU.
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["heldout_loss"] == straight["heldout_loss"]
    for name, w in reference.state_dict().items():
        assert torch.equal(net.state_dict()[name], w), name


def _nan_at(monkeypatch: pytest.MonkeyPatch, cls: type, step: int) -> None:
    """Make ``cls``'s loss NaN from optimizer step ``step`` on (an injected divergence)."""
    original = cls.model_step

    def model_step(self, batch):  # type: ignore[no-untyped-def]
        loss, extra = original(self, batch)
        return (loss * torch.nan if self.global_step >= step else loss), extra

    monkeypatch.setattr(cls, "model_step", model_step)


def test_other_settings_start_fresh_instead_of_resuming(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _ready(project)
    with monkeypatch.context() as m:
        _nan_at(m, FlowMatching, 10)
        with pytest.raises(TrainingError):  # stops at step 10, leaving the checkpoint of step 8
            train_expert.run(project.config(), project.paths, 0)
    assert (project.paths.resume("train-expert@0") / LAST).exists()

    project.update(expert={"lr": 1e-3})
    metrics = train_expert.run(project.config(), project.paths, 0)
    assert metrics is not None and metrics["resumed_from_step"] == 0
    assert capsys.readouterr().err.split("other settings (")[1].split(")")[0] == "expert.lr changed"


def test_nan_loss_stops_with_one_line_and_keeps_checkpoint_and_old_weights(project: Project,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _ready(project, router={"steps": 30, "lr": 0.002})
    assert train_router.run(project.config(), project.paths) is not None  # earlier good router weights
    before = project.paths.model("router").read_bytes()

    _nan_at(monkeypatch, RouterTraining, 10)
    with pytest.raises(TrainingError) as err:
        train_router.run(project.config(), project.paths)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("train-router: loss became nan at step 10; lower router.lr (now 0.002)"), msg
    ckpt = project.paths.resume("train-router") / LAST
    assert f"the resume checkpoint of step 8 ({ckpt}) is kept" in msg
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 8  # the last checkpoint before the divergence
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert project.paths.model("router").read_bytes() == before  # the previous final weights are untouched


def test_step_batches_are_a_function_of_the_step() -> None:
    """The batch of step s is the same whether iteration starts at 0 or at s, and W ranks of batch B
    together take exactly one process's batch of W x B."""
    one = StepBatches(50, 8, seed=3, world_size=1)
    whole = [b for _, b in zip(range(20), one)]
    late = StepBatches(50, 8, seed=3)
    late.first_step = lambda: 13
    assert all(torch.equal(a, b) for a, b in zip(whole[13:], late))
    two = [StepBatches(50, 4, seed=3, world_size=2) for _ in range(2)]
    two[1].rank = 1
    two_batches = [zip(range(20), s) for s in two]
    for (s, a), (_, b) in zip(*two_batches):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(whole[s].tolist())
    epoch = torch.cat(whole[:6])  # 50 // 8 = 6 batches per epoch, no repeats within an epoch
    assert len(set(epoch.tolist())) == 48
