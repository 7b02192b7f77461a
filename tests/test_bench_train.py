"""bench-train: the two timed paths do the same work, and the command reports a ratio and refuses bad options."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.tools.bench_train import bench_data, lightning_steps_per_s, plain_steps_per_s

pytestmark = pytest.mark.slow


def test_lightning_and_plain_loop_train_the_same_weights() -> None:
    """Same init, batches, noise, AdamW and EMA: the ratio compares like with like (equal up to float noise)."""
    images = bench_data(64)
    rate_l, net_l = lightning_steps_per_s("unet-xs", images, 8, 3, 1, "cpu", "32-true", False)
    rate_p, net_p = plain_steps_per_s("unet-xs", images, 8, 3, 1, "cpu", "32-true", False)
    assert rate_l > 0 and rate_p > 0
    for name, w in net_p.state_dict().items():
        assert torch.allclose(net_l.state_dict()[name], w, rtol=1e-4, atol=1e-6), name


def test_bench_train_writes_ratio(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench-train.json"
    result = CliRunner().invoke(app, ["bench-train", "--batch", "8", "--steps", "2", "--warmup", "1",
                                      "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["ratio"] == pytest.approx(saved["median_steps_per_s"]["lightning"] / saved["median_steps_per_s"]["plain"])
    assert "Lightning / plain" in result.output


@pytest.mark.parametrize("args, key", [(["--compile"], "--compile"), (["--net", "unet-xl"], "--net"),
                                       (["--precision", "16-mixed"], "--precision")])
def test_bench_train_refuses_bad_options(tmp_path, args: list[str], key: str) -> None:
    result = CliRunner().invoke(app, ["bench-train", "--out", str(tmp_path / "b.json"), *args])
    assert result.exit_code == 2 and key in result.output
    assert not (tmp_path / "b.json").exists()
