"""Traces record exactly what the sampler used, without changing the samples."""

from __future__ import annotations

import pytest
import torch

from ddmbench.sampling.field import RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.traces import TraceRecorder


def _expert(scale: float):
    return lambda x, t: -scale * x


def _router(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3))
    return torch.stack([m, -m, 0.5 * m], dim=1) * 10  # (B, 3) logits that depend on the state


def _field(label: str) -> RoutedField:
    return RoutedField([_expert(1.0), _expert(2.0), _expert(0.5)], _router, parse_policy(label))


def test_tracing_changes_nothing_and_records_every_step() -> None:
    seeds = list(range(10))
    plain = generate(_field("top-2"), seeds, nfe_steps=4, solver="heun", batch_size=4)
    traced_field = _field("top-2")
    rec = TraceRecorder(traced_field, probe_n=6)
    traced = generate(traced_field, seeds, nfe_steps=4, solver="heun", batch_size=4, observers=[rec])
    assert torch.equal(plain.images, traced.images)
    assert traced.expert_evals == plain.expert_evals  # probe evaluations are not part of the cost
    assert rec.probe_evals == 3 * 6 * 8
    tr = rec.result()
    assert tr["p"].shape == (10, 8, 3) and tr["w"].shape == (10, 8, 3)
    assert torch.allclose(tr["w"].sum(-1), torch.ones(10, 8))
    assert ((tr["w"] > 0).sum(-1) == 2).all()  # top-2 keeps two experts at every evaluation
    assert tr["probe_index"].tolist() == list(range(6))
    assert tr["probe_v_experts"].shape == (6, 8, 3, 1, 28, 28)
    # The combined velocity is the weighted sum of the recorded expert predictions.
    w = tr["w"][:6].view(6, 8, 3, 1, 1, 1)
    assert torch.allclose((w * tr["probe_v_experts"]).sum(2), tr["probe_v"], atol=1e-6)
    assert tr["t"][0] == 1.0


def test_expert_counts_match_trace_weights() -> None:
    rec = TraceRecorder()
    result = generate(_field("threshold-0.2"), list(range(7)), nfe_steps=3, solver="euler", batch_size=3,
                      observers=[rec])
    used = (rec.result()["w"] > 0).sum(dim=(0, 1))  # (K,) rows each expert saw
    assert used.tolist() == result.expert_evals


def test_probing_needs_the_field() -> None:
    with pytest.raises(ValueError, match="routed field"):
        TraceRecorder(probe_n=2)
