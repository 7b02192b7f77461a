"""Network folders load their weights once: the network is built on the meta device (no storage of its own) and
the file's tensors become its weights; a class that cannot be built there is built for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ddmbench.ddm import networks
from ddmbench.ddm.folder import ddmbench_config

UNET = {"_class_name": "UNet2DModel", "sample_size": 28, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


@pytest.mark.parametrize("config", [UNET, ddmbench_config("expert", "unet-xs", (1, 28, 28))], ids=["diffusers", "ddmbench"])
def test_built_empty_then_the_files_tensors_are_the_weights(config: dict, tmp_path: Path) -> None:
    empty, _ = networks._build_empty(config, tmp_path)
    assert all(p.is_meta for p in empty.parameters())          # nothing allocated before the file is read
    torch.manual_seed(0)
    trained, _ = networks.build(config, tmp_path)
    networks.save_network(tmp_path / "net", trained, config)
    loaded, _, files = networks.load_network(tmp_path / "net")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 0.7])
    call = networks.call_diffusers if config["_class_name"] != "ddmbench" else networks.call_plain
    assert torch.equal(call(trained.eval(), x, t, None), call(loaded, x, t, None))
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors"}


class WithTable(nn.Module):
    """A user's class that computes a (non-persistent) table from data at construction."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("table", torch.arange(4.0).exp(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.table


def build_with_table(config: dict) -> nn.Module:
    return WithTable()


def test_a_buffer_no_file_holds_is_built_for_real(tmp_path: Path) -> None:
    config = {"_class_name": f"{__name__}:build_with_table"}
    networks.save_network(tmp_path / "net", WithTable(), config)
    loaded, _, _ = networks.load_network(tmp_path / "net")
    assert torch.equal(loaded.table, torch.arange(4.0).exp()) and not loaded.lin.weight.is_meta
