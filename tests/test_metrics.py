"""FID / KID on precomputed features (one implementation, equal to torchmetrics), their jackknife intervals,
the evaluator digest and precision/recall: known answers on Gaussians."""

from __future__ import annotations

import pytest
import torch

from ddmbench.errors import ArtifactError
from ddmbench.evaluation.features import (
    Precomputed,
    classifier_stats,
    extract_features,
    load_real_features,
    save_real_features,
)
from ddmbench.evaluation.fid import RealGaussians, fid, grouped_moments
from ddmbench.evaluation.identity import check_same_evaluator, weights_sha256
from ddmbench.evaluation.intervals import RealSet, jackknife, paired_quality, quality_intervals
from ddmbench.evaluation.kid import RealKernel, kid_subsets, kid_unbiased
from ddmbench.evaluation.precision_recall import nearest_distance, precision_recall
from ddmbench.models.nets import build_classifier


def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Evaluator-like features: correlated, non-negative (ReLU) Gaussians (n, d)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d ** 0.5
    return ((torch.randn(n, d, generator=g) @ mix) * scale + shift).relu()


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_costs_its_square() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 3.0
    assert fid(a, a + shift) == pytest.approx(9.0, rel=1e-6)  # same covariance: FID = ||mu_a - mu_b||^2


@pytest.mark.parametrize("shift, scale, d", [(0.0, 1.0, 32), (0.3, 1.2, 32), (1.0, 0.7, 64)])
def test_fid_equals_torchmetrics_to_1e_6(shift: float, scale: float, d: int) -> None:
    """One FID implementation: the plug-in and every jackknife value come from the code torchmetrics agrees with."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features(3000, d, 0).double(), _features(500, d, 1, shift, scale).double()
    metric = FrechetInceptionDistance(feature=Precomputed(d), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    assert fid(real, fake) == pytest.approx(expected, rel=1e-6)
    values = RealGaussians(real, 10).leave_out(fake)                  # (11,): all rows first
    assert float(values[0]) == pytest.approx(expected, rel=1e-6)


def test_singular_real_covariance_falls_back_to_the_symmetric_root() -> None:
    real, fake = _features(400, 16, 2).double(), _features(300, 16, 3, 0.2).double()
    real[:, 0] = 0.0                                                   # a dead ReLU unit: S_r is singular
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=Precomputed(16), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert fid(real, fake) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_leave_one_group_out_moments_equal_a_direct_computation() -> None:
    x = _features(103, 6, 4).double()                                  # 103 rows: groups of 6 and 5 rows
    mean, cov = grouped_moments(x, 17)
    keep = torch.arange(103) % 17 != 4
    assert torch.allclose(mean[0], x.mean(0)) and torch.allclose(cov[0], torch.cov(x.T))
    assert torch.allclose(mean[5], x[keep].mean(0)) and torch.allclose(cov[5], torch.cov(x[keep].T))


def test_kid_equals_torchmetrics_with_one_full_subset_and_leaves_out_groups_exactly() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(300, 16, 2).double(), _features(300, 16, 3, 0.2).double()
    metric = KernelInceptionDistance(feature=Precomputed(16), subsets=1, subset_size=300, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute()[0])  # one subset of all rows = the full-set unbiased MMD^2
    assert kid_unbiased(real, fake) == pytest.approx(expected, rel=1e-6)
    values = RealKernel(real, 7).leave_out(fake)
    assert float(values[0]) == pytest.approx(expected, rel=1e-6)
    keep = torch.arange(300) % 7 != 3
    assert float(values[4]) == pytest.approx(kid_unbiased(real[keep], fake[keep]), rel=1e-9)


def test_kid_subsets_is_seeded_and_separates_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same = kid_subsets(a, b, subset_size=200, subsets=20, seed=0)
    far = kid_subsets(a, b + 2.0, subset_size=200, subsets=20, seed=0)
    assert abs(same[0]) < 0.05 < far[0]
    assert kid_subsets(a, b, subset_size=200, subsets=20, seed=0) == same


def test_jackknife_removes_a_bias_linear_in_one_over_n() -> None:
    """theta(n) = theta_inf + a / n on every subset: the corrected value is theta_inf exactly."""
    groups, n = 10, 200
    sizes = torch.tensor([n] + [n - n // groups] * groups, dtype=torch.float64)
    jk = jackknife(3.0 + 50.0 / sizes)
    assert jk.corrected == pytest.approx(3.0, abs=1e-12) and jk.se == pytest.approx(0.0, abs=1e-12)
    assert jk.p_value(0.0) == 1.0 and jk.p_value(3.0) == 0.0


def test_quality_intervals_name_their_estimands_and_contain_their_centres() -> None:
    real, fake = _features(2000, 16, 4), _features(400, 16, 5, 0.2)
    q = quality_intervals(RealSet(real, 20), fake)
    assert q["fid"] == pytest.approx(fid(real, fake), rel=1e-9)
    assert q["fid_ci95"][0] < q["fid"] < q["fid_ci95"][1]
    assert q["fid_inf_ci95"][0] < q["fid_inf"] < q["fid_inf_ci95"][1] and q["fid_inf"] < q["fid"]  # bias is > 0
    assert q["kid_ci95"][0] < q["kid_unbiased"] < q["kid_ci95"][1]
    assert "N = 400" in q["fid_estimand"] and "M = 2000" in q["fid_estimand"]
    assert q["fid_inf_estimand"].startswith("FID_inf") and q["kid_estimand"].startswith("KID")
    assert q["jackknife_groups"] == 20
    assert quality_intervals(RealSet(real, 20), fake) == q              # no random stream: the same rows, same result


def test_intervals_narrow_with_more_samples_and_a_far_set_lies_above_a_near_set() -> None:
    real = _features(3000, 16, 6)
    rs = RealSet(real, 20)
    small, large = quality_intervals(rs, _features(100, 16, 7, 0.2)), quality_intervals(rs, _features(800, 16, 7, 0.2))
    width = lambda q, k: q[k][1] - q[k][0]  # noqa: E731
    assert width(large, "fid_inf_ci95") < width(small, "fid_inf_ci95") and width(large, "kid_ci95") < width(small, "kid_ci95")
    near, far = quality_intervals(rs, _features(300, 16, 8)), quality_intervals(rs, _features(300, 16, 9, 1.0))
    assert near["fid_inf_ci95"][1] < far["fid_inf_ci95"][0] and near["kid_ci95"][1] < far["kid_ci95"][0]


def test_paired_quality_is_zero_for_identical_sets_and_detects_a_shift() -> None:
    real, fake = _features(2000, 8, 10), _features(400, 8, 11)
    rs = RealSet(real, 20)
    same = paired_quality(rs, fake, fake.clone())
    for key in ("fid", "kid"):
        assert same[key]["estimate"] == 0 and same[key]["ci95"] == [0.0, 0.0] and same[key]["p_value"] == 1.0
        assert same[key]["verdict"] == "not separable"
    r = paired_quality(rs, fake + 0.3, fake, labels=("top-2", "full"))
    assert r["fid"]["plug_in_delta"] == pytest.approx(fid(real, fake + 0.3) - fid(real, fake), rel=1e-6)
    for key in ("fid", "kid"):
        assert r[key]["verdict"] == "higher" and r[key]["ci95"][0] > 0 and r[key]["p_value"] < 0.001
        assert "top-2" in r[key]["estimand"] and "full" in r[key]["estimand"]
        assert "jackknife" in r[key]["p_value_method"]


def test_paired_quality_rejects_unaligned_rows_and_too_few_rows() -> None:
    rs = RealSet(torch.randn(100, 4), 20)
    with pytest.raises(ValueError, match="row-aligned"):
        paired_quality(rs, torch.randn(30, 4), torch.randn(40, 4))
    with pytest.raises(ValueError, match="cannot fill 20 jackknife groups"):
        quality_intervals(rs, torch.randn(10, 4))
    with pytest.raises(ValueError, match="jackknife groups must be in 2..5"):
        RealSet(torch.randn(5, 4), 20)


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


def test_evaluator_digest_follows_the_weights_and_mixing_digests_is_refused() -> None:
    torch.manual_seed(0)
    a, b = build_classifier("classifier-s"), build_classifier("classifier-s")
    copy = build_classifier("classifier-s")
    copy.load_state_dict(a.state_dict())
    assert weights_sha256(a) == weights_sha256(copy) == weights_sha256(a.state_dict()) != weights_sha256(b)
    da, db = weights_sha256(a), weights_sha256(b)
    assert check_same_evaluator({"x.pt": da, "y.json": da}) == da
    with pytest.raises(ArtifactError, match=f"x.pt has {da} and y.json has {db}"):
        check_same_evaluator({"x.pt": da, "y.json": db})
    with pytest.raises(ArtifactError, match="y.json records no evaluator digest"):
        check_same_evaluator({"x.pt": da, "y.json": None})


def test_real_features_file_names_its_evaluator_and_refuses_another(tmp_path) -> None:
    path = tmp_path / "real-test.pt"
    feats = torch.randn(50, 8)
    save_real_features(path, feats, evaluator_sha256="a" * 64, dataset="mnist", split="test")
    loaded, digest = load_real_features(path, evaluator_sha256="a" * 64, dataset="mnist")
    assert torch.equal(loaded, feats) and digest == "a" * 64
    with pytest.raises(ArtifactError, match="extracted by evaluator aaaaaaaaaaaa but the current evaluator is "
                                            "bbbbbbbbbbbb; re-run `ddmbench features`"):
        load_real_features(path, evaluator_sha256="b" * 64)
    with pytest.raises(ArtifactError, match="features of 'mnist', not of 'fashion-mnist'"):
        load_real_features(path, dataset="fashion-mnist")
    with pytest.raises(ArtifactError, match="missing.pt is missing; run `ddmbench features`"):
        load_real_features(tmp_path / "missing.pt")


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


def test_contrast_refuses_quality_files_from_another_evaluator(tmp_path) -> None:
    """The stage-level check: one line naming both digests and both files, before anything is computed."""
    from ddmbench.config import parse_config
    from ddmbench.pipeline import contrast
    from ddmbench.pipeline.paths import Paths

    paths = Paths(tmp_path)
    cfg = parse_config({})
    save_real_features(paths.real_features, torch.randn(40, 4), evaluator_sha256="a" * 64, dataset="mnist",
                       split="test")
    good = {"features": torch.randn(30, 4), "seeds": torch.arange(30), "evaluator_sha256": "a" * 64}
    stale = {**good, "evaluator_sha256": "b" * 64}
    real, digest = contrast.real_set(cfg, paths, {"full": good, "top-2": good})
    assert digest == "a" * 64 and real.m == 40
    with pytest.raises(ArtifactError, match=f"outputs/features/real-test.pt has {'a' * 64} and "
                                            f"outputs/quality/top-2.pt has {'b' * 64}"):
        contrast.real_set(cfg, paths, {"full": good, "top-2": stale})
