"""Trainer options: GPU-only settings are refused on the CPU, and --devices / --num-nodes override params."""

from __future__ import annotations

import pytest
from conftest import Project
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.config import parse_config, with_trainer
from ddmbench.errors import ConfigError


@pytest.mark.parametrize("trainer, fragment", [
    ({"precision": "16-mixed"}, "16-mixed needs a GPU"),
    ({"compile": True}, "compile: true is for GPU profiles"),
    ({"checkpoint_every_n_steps": 0}, "trainer.checkpoint_every_n_steps"),
])
def test_gpu_only_and_bad_trainer_options_are_refused(trainer: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config({"trainer": {"accelerator": "cpu", **trainer}})


def test_gpu_profile_options_validate() -> None:
    cfg = parse_config({"trainer": {"accelerator": "gpu", "precision": "bf16-mixed", "compile": True}})
    assert cfg.trainer.compile and cfg.trainer.precision == "bf16-mixed"


def test_cli_overrides_replace_params_and_are_validated() -> None:
    cfg = parse_config({"trainer": {"devices": 1, "num_nodes": 1}})
    assert with_trainer(cfg) is cfg
    over = with_trainer(cfg, devices=8, num_nodes=2)
    assert (over.trainer.devices, over.trainer.num_nodes, over.trainer.world_size) == (8, 2, 16)
    with pytest.raises(ConfigError, match=r"params.yaml with --devices: trainer.devices: .*\(got 0\)"):
        with_trainer(cfg, devices=0)


@pytest.mark.parametrize("command", [["train-expert", "--expert", "0"], ["train-router"], ["train-evaluator"],
                                     ["train-monolith"]])
def test_train_commands_take_devices_and_nodes(project: Project, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--params", str(project.params), "--num-nodes", "0"])
    assert result.exit_code == 2, result.output
    assert "--num-nodes" in result.output and "trainer.num_nodes" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_compiled_forward_keeps_weight_names_and_is_undone() -> None:
    """trainer.compile must not rename the saved weights (torch.compile(net) would prefix _orig_mod.)."""
    import copy

    import torch

    from ddmbench.models import nets
    from ddmbench.train.trainer import compiled

    net = nets.build_velocity_net("unet-xs")
    keys = list(net.state_dict())
    with compiled(net, True):
        assert "forward" in vars(net) and list(net.state_dict()) == keys
        assert list(copy.deepcopy(net).state_dict()) == keys  # WeightAveraging deep-copies the module
    assert "forward" not in vars(net)
    with compiled(net, False):
        assert "forward" not in vars(net)
    assert net(torch.zeros(1, 1, 28, 28), torch.zeros(1)).shape == (1, 1, 28, 28)


def test_bf16_on_a_cpu_follows_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from ddmbench import hardware

    assert hardware.cpu_has_bf16(frozenset({"avx2", "amx_bf16"}))
    assert hardware.cpu_has_bf16(frozenset({"avx512_bf16"}))
    assert not hardware.cpu_has_bf16(frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ConfigError, match=r"trainer.*bf16.*avx512_bf16, amx_bf16.*32-true"):
        parse_config({"trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}})
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}))
    assert parse_config({"trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}}).trainer.precision == "bf16-mixed"


def test_vector_isa_names_the_widest_extension() -> None:
    from ddmbench import hardware

    assert hardware.vector_isa(frozenset({"sse2", "avx2"})) == "avx2"
    assert hardware.vector_isa(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "avx512"
    assert hardware.vector_isa(frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})) == "amx"
    assert hardware.vector_isa(frozenset()) not in ("avx2", "avx512", "amx")   # the architecture instead
    assert set(hardware.machine_fingerprint()) == {"isa", "cpu", "torch", "threads"}
