"""FID / KID on precomputed features: known answers on Gaussians."""

from __future__ import annotations

import pytest
import torch

from ddmbench.metrics import classifier_stats, extract_features, fid, kid
from ddmbench.nets import build_classifier


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_costs_its_square() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 3.0
    assert fid(a, a + shift) == pytest.approx(9.0, rel=1e-6)  # same covariance: FID = ||mu_a - mu_b||^2


def test_kid_separates_distributions_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same = kid(a, b, subset_size=200, subsets=20, seed=0)
    far = kid(a, b + 2.0, subset_size=200, subsets=20, seed=0)
    assert abs(same[0]) < 0.05 < far[0]
    assert kid(a, b, subset_size=200, subsets=20, seed=0) == same  # same seed, same subsets


def test_features_come_from_the_scaled_penultimate_layer() -> None:
    torch.manual_seed(0)
    net = build_classifier("classifier-s")
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    scale = net.calibrate_feature_scale(x)
    feats = extract_features(net, x, batch=16)
    assert feats.shape == (64, net.num_features)
    assert feats.var(dim=0).mean() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(feats, net.body(x) * scale)
    stats = classifier_stats(net, x)
    assert 0.1 <= stats["confidence"] <= 1.0 and 0.0 <= stats["class_entropy"] <= stats["class_entropy_max"]
