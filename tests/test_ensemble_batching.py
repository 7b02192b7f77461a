"""ddmbench.tools.ensemble_batching: the batched (vmap) dense ensemble computes what the loop computes."""

from __future__ import annotations

import pytest
import torch

from ddmbench.models.nets import build_velocity_net
from ddmbench.tools import ensemble_batching as eb


@pytest.mark.parametrize("preset", ["unet-xs", "dit-xs"])
def test_batched_experts_give_the_loops_velocities(preset: str) -> None:
    torch.manual_seed(0)
    experts = [build_velocity_net(preset).eval() for _ in range(3)]
    for i, expert in enumerate(experts):          # distinct weights, so a mix-up of experts would show
        for p in expert.parameters():
            p.data.add_(0.05 * (i + 1) * torch.randn_like(p))
    x, t = torch.randn(5, 1, 28, 28), torch.rand(5)
    with torch.no_grad():
        loop, vmapped = eb.looped(experts)(x, t), eb.batched(experts)(x, t)
        each = torch.stack([e(x, t) for e in experts])
    assert loop.shape == vmapped.shape == (3, 5, 1, 28, 28)
    assert torch.equal(loop, each)
    torch.testing.assert_close(vmapped, loop, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(vmapped[0], vmapped[1])


def test_measure_reports_ratios_and_differences() -> None:
    result = eb.measure(num_experts=2, preset="unet-xs", rows=4, repeats=2)
    assert set(result["ms"]) == {"loop", "vmap"} and all(v > 0 for v in result["ms"].values())
    assert result["ratio_to_loop"]["vmap"] == pytest.approx(result["ms"]["vmap"] / result["ms"]["loop"])
    assert 0 <= result["max_abs_diff_from_loop"]["vmap"] < 1e-4
    assert "compile_seconds" not in result
