"""FID / KID on precomputed features, their bootstrap intervals and precision/recall: known answers on Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from ddmbench.evaluation.metrics import (
    FrechetToReal,
    KernelToReal,
    Precomputed,
    classifier_stats,
    extract_features,
    fid,
    kid,
    nearest_distance,
    precision_recall,
    quality_intervals,
)
from ddmbench.models.nets import build_classifier


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


# ----------------------------------------------------------------------------------------------
# bootstrap intervals, the fast Fréchet distance, precision/recall (issue 5 item 1)
# ----------------------------------------------------------------------------------------------

def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Evaluator-like features: correlated, non-negative (ReLU) Gaussians (n, d)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d ** 0.5
    return ((torch.randn(n, d, generator=g) @ mix) * scale + shift).relu()


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.3, 1.2), (1.0, 0.7)])
def test_fast_frechet_distance_equals_torchmetrics_fid(shift: float, scale: float) -> None:
    real, fake = _features(3000, 32, 0), _features(500, 32, 1, shift, scale)
    expected = fid(real, fake)
    assert float(FrechetToReal(real)(fake)) == pytest.approx(expected, rel=1e-4)
    batch = torch.stack([fake, fake.flip(0), real[:500]])            # a batch of sets, one call
    values = FrechetToReal(real)(batch)
    assert values.shape == (3,) and float(values[0]) == pytest.approx(float(values[1]), rel=1e-9)
    assert float(values[2]) == pytest.approx(fid(real, real[:500]), rel=1e-4)


def test_kernel_statistic_equals_torchmetrics_kid_with_one_full_subset() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(300, 16, 2).double(), _features(300, 16, 3, 0.2).double()
    metric = KernelInceptionDistance(feature=Precomputed(16), subsets=1, subset_size=300, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute()[0])  # one subset of all rows = the full-set unbiased MMD^2
    ones = torch.ones(1, 300, dtype=torch.float64)
    assert float(KernelToReal(real, fake)(ones)[0]) == pytest.approx(expected, rel=1e-4)
    assert float(KernelToReal(real, fake, chunk=64)(ones)[0]) == pytest.approx(expected, rel=1e-4)  # blockwise sums


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_samples() -> None:
    real = _features(4000, 16, 4)
    widths = {}
    for n in (100, 400):
        q = quality_intervals(real, _features(n, 16, 5, 0.2), resamples=200, seed=0)
        point = float(FrechetToReal(real)(_features(n, 16, 5, 0.2)))
        assert q["fid_ci95"][0] < point < q["fid_ci95"][1]
        assert q["kid_ci95"][0] < q["kid_unbiased"] < q["kid_ci95"][1]
        assert q["bootstrap"] == 200
        widths[n] = (q["fid_ci95"][1] - q["fid_ci95"][0], q["kid_ci95"][1] - q["kid_ci95"][0])
    assert widths[400][0] < widths[100][0] and widths[400][1] < widths[100][1]


def test_bootstrap_is_seeded_and_a_far_set_lies_above_a_near_set() -> None:
    real, near, far = _features(2000, 16, 6), _features(300, 16, 7), _features(300, 16, 8, 1.0)
    a = quality_intervals(real, near, resamples=50, seed=3)
    assert quality_intervals(real, near, resamples=50, seed=3) == a
    assert quality_intervals(real, near, resamples=50, seed=4) != a
    b = quality_intervals(real, far, resamples=50, seed=3)
    assert a["fid_ci95"][1] < b["fid_ci95"][0] and a["kid_ci95"][1] < b["kid_ci95"][0]


def test_kernel_resample_ignores_pairs_of_a_row_with_its_duplicate() -> None:
    real, fake = _features(200, 8, 9).double(), _features(50, 8, 10).double()
    kernel = KernelToReal(real, fake)
    counts = torch.zeros(1, 50, dtype=torch.float64)
    counts[0, :25] = 2.0                             # every drawn row twice
    # distinct-pair sums over 25 rows each doubled = the same U-statistic as the 25 rows once
    expected = float(KernelToReal(real, fake[:25])(torch.ones(1, 25, dtype=torch.float64))[0])
    assert float(kernel(counts)[0]) == pytest.approx(expected, rel=1e-9)


def test_precision_recall_of_identical_and_far_sets() -> None:
    a = _features(400, 16, 11)
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    b = _features(400, 16, 12)  # same distribution, other draw
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    p_far, r_far = precision_recall(a, b + 50.0)
    assert p_far == 0.0 and r_far == 0.0
    # a collapsed generator (one mode, tiny spread) keeps precision and loses recall
    collapsed = a[:1] + 0.01 * torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    p_c, r_c = precision_recall(a, collapsed)
    assert p_c == 1.0 and r_c < 0.1


def test_nearest_distance_is_zero_on_the_reference_and_exact_off_it() -> None:
    ref = _features(100, 8, 13)
    assert torch.all(nearest_distance(ref[:10], ref) == 0)
    query = ref[:5] + torch.tensor([3.0, 4.0] + [0.0] * 6)
    dist = nearest_distance(query, ref)
    assert torch.all(dist <= 5.0 + 1e-5)
    assert torch.allclose(dist, torch.cdist(query.double(), ref.double()).min(1).values.float())


def test_intervals_stay_finite_for_the_smallest_sets() -> None:
    q = quality_intervals(_features(50, 4, 14), _features(3, 4, 15), resamples=200, seed=0)
    assert all(math.isfinite(v) for v in (*q["fid_ci95"], *q["kid_ci95"], q["kid_unbiased"]))
