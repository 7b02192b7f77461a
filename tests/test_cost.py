"""Cost accounting: measured FLOPs, GFLOPs per image from counters, and the bench's bookkeeping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddmbench.evaluation.cost import flops_per_image, gflops_per_image
from ddmbench.models.nets import build_router, build_velocity_net
from ddmbench.tools import bench


class _Linear(nn.Module):
    """A velocity 'model' with an exactly known cost: one (784 -> 784) matmul per image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 784, bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).view_as(x)


def test_flops_of_a_known_layer() -> None:
    assert flops_per_image(_Linear()) == 2 * 784 * 784


class _FusedAttention(nn.Module):
    """Self-attention over the 28 rows of the image through torch's fused kernel (as diffusers' models call it)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows = x.flatten(1, 2)                                                  # (B, 28, 28): T = 28, d = 28
        return nn.functional.scaled_dot_product_attention(rows, rows, rows).view_as(x)


def test_fused_attention_is_counted_as_its_two_matmuls() -> None:
    assert flops_per_image(_FusedAttention()) == 2 * (2 * 28 * 28 * 28)        # Q K^T and (softmax) V


def test_router_is_cheap_next_to_an_expert() -> None:
    # The router runs at every step of every routed policy: its cost is the floor under Top-1's.
    assert flops_per_image(build_router("router-s", 8)) < 0.15 * flops_per_image(build_velocity_net("unet-xs"))


def test_gflops_per_image_adds_experts_and_router() -> None:
    assert gflops_per_image([12.0, 8.0], [2e9, 2e9], 10.0, 1e8) == pytest.approx(41.0)
    assert gflops_per_image([120.0, 80.0], [2e9, 2e9], 100.0, 1e8, images=10) == pytest.approx(41.0)
    # experts of different architectures: each evaluation costs its own expert's FLOPs
    assert gflops_per_image([12.0, 8.0], [1e9, 3e9], 10.0, 1e8) == pytest.approx(12 + 24 + 1.0)
    with pytest.raises(ValueError, match="2 experts"):
        gflops_per_image([12.0, 8.0], [1e9], 10.0, 1e8)


@pytest.mark.slow
def test_bench_ratios_are_computed_from_interleaved_medians() -> None:
    result = bench.time_policies(num_experts=2, preset="unet-xs", batch=16, nfe_steps=1, repeats=2)
    assert set(result["median_s"]) == set(bench.BENCH_POLICIES)
    assert all(len(w) == 2 for w in result["walls_s"].values())
    for row, ((num, den), target) in zip(result["ratios"], bench.TARGETS.items()):
        assert row["value"] == pytest.approx(result["median_s"][num] / result["median_s"][den])
        assert row["pass"] == (row["value"] <= target)
    assert 0.0 < result["top1_max_expert_share"] < 1.0  # both experts get rows


@pytest.mark.slow
def test_bench_router_spreads_the_load() -> None:
    experts, router, monolith = bench.build_models(8, "unet-xs")
    field = bench.make_field("top-1", experts, router, monolith)
    r = field.route(torch.randn(256, 1, 28, 28), torch.full((256,), 0.5))
    assert len(r.dispatch) >= 4  # not every row sent to one expert
