"""Router calibration scores and temperature scaling on synthetic logits with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from ddmbench.analysis.calibration import calibration, fit_temperature, reliability_bins, temperature_nll


def _calibrated(n: int, k: int = 4, scale: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution: labels drawn from it."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


def test_known_answers_on_two_samples() -> None:
    p = torch.tensor([[0.7, 0.3], [0.55, 0.45]], dtype=torch.float64)
    out = calibration(p.log(), torch.tensor([0, 1]))
    assert out["n"] == 2 and out["accuracy"] == 0.5
    assert out["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.45)) / 2)
    assert out["brier"] == pytest.approx((2 * 0.3 ** 2 + 2 * 0.55 ** 2) / 2)
    assert out["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.55, abs=1e-6)
    filled = [b for b in out["reliability"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(1, 0.0), (1, 1.0)]
    assert [b["confidence"] for b in filled] == pytest.approx([0.55, 0.7])
    assert len(out["reliability"]) == 15 and out["reliability"][0]["accuracy"] is None


def test_a_calibrated_router_has_small_ece_and_t_near_one() -> None:
    logits, labels = _calibrated(20_000)
    out = calibration(logits, labels)
    assert out["ece"] < 0.02
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_temperature_scaling_recovers_the_distortion_and_lowers_nll_and_ece(factor: float) -> None:
    logits, labels = _calibrated(20_000, seed=1)
    distorted = factor * logits                 # over- (factor > 1) or under-confident (< 1)
    temp = fit_temperature(distorted, labels)
    assert temp == pytest.approx(factor, rel=0.05)
    before, after = calibration(distorted, labels), calibration(distorted / temp, labels)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] and before["ece"] > 0.05
    assert after["accuracy"] == before["accuracy"]          # T never changes the argmax
    assert temperature_nll(distorted, labels, temp) <= temperature_nll(distorted, labels, 1.0)


def test_reliability_bins_reproduce_torchmetrics_ece() -> None:
    logits, labels = _calibrated(3000, seed=2)
    out = calibration(3.0 * logits, labels)
    bins = [b for b in out["reliability"] if b["count"]]
    ece = sum(b["count"] / out["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(out["ece"], abs=1e-6)
    assert sum(b["count"] for b in out["reliability"]) == 3000


def test_confidence_one_joins_the_last_bin() -> None:
    bins = reliability_bins(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([True, False, True]), n_bins=4)
    assert [b["count"] for b in bins] == [1, 0, 1, 1] and bins[-1]["hi"] == 1.0


def test_bad_inputs_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"logits \(N, K\) and labels \(N,\)"):
        calibration(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_temperature(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
