"""The roofline of `ddmbench bench`: FLOP counts with known answers, peaks, and the rows' arithmetic."""

from __future__ import annotations

import pytest
import torch

from ddmbench.tools import roofline as rl


def test_flop_count_of_a_matmul_and_of_a_training_step() -> None:
    a, b = torch.randn(32, 64), torch.randn(64, 16)
    assert rl.count_flops(lambda: a @ b) == 2 * 32 * 64 * 16
    lin = torch.nn.Linear(64, 16, bias=False)
    x = torch.randn(32, 64)
    # forward 2·B·in·out; backward computes grad of the weight (same) but not of the input (no grad needed)
    assert rl.count_flops(lambda: lin(x).sum().backward()) == 2 * (2 * 32 * 64 * 16)


def test_matmul_peak_is_flops_over_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rl, "median_seconds", lambda fn, repeats, device="cpu", warmup=1: 0.5)
    assert rl.matmul_peak("fp32", size=256) == pytest.approx(2 * 256**3 / 0.5 / 1e9)


@pytest.mark.slow
def test_roofline_rows_on_tiny_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    result = rl.roofline(repeats=1, matmul_size=128, nets_to_time=("unet-xs",), chunk_rows=4, batch=4, accuracy_rows=4)
    peak = result["peak_gflops_per_s"]
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    names = {r["path"] for r in result["rows"]}
    assert {"unet-xs expert forward, sampling chunk", "unet-xs expert train step", "router train step"} <= names
    assert {r["dtype"] for r in result["rows"]} == {"fp32", "bf16"}
    for r in result["rows"]:
        assert r["gflop"] > 0 and r["ms"] > 0
        assert r["gflops_per_s"] == pytest.approx(r["gflop"] / (r["ms"] / 1e3))
        assert r["fraction_of_fp32_peak"] == pytest.approx(r["gflops_per_s"] / peak["fp32"])
    fwd = [r for r in result["rows"] if r["path"].endswith("sampling chunk")]
    step = [r for r in result["rows"] if r["path"] == "unet-xs expert train step"]
    assert step[0]["gflop"] > 2 * fwd[0]["gflop"]  # a step is forward + backward on as many rows (4)


def test_sampling_rows_count_expert_and_router_work() -> None:
    timing = {"evals": {"full": (800, 100), "top-1": (100, 100)}, "median_s": {"full": 2.0, "top-1": 0.5}}
    rows = {r["path"]: r for r in rl.sampling_rows(timing, expert_gflop=0.01, router_gflop=0.001,
                                                   peak={"fp32": 10.0, "bf16": 40.0})}
    assert rows["sampling full"]["gflop"] == pytest.approx(800 * 0.01 + 100 * 0.001)
    assert rows["sampling full"]["gflops_per_s"] == pytest.approx(8.1 / 2.0)
    assert rows["sampling top-1"]["fraction_of_bf16_peak"] == pytest.approx((1.1 / 0.5) / 40.0)
