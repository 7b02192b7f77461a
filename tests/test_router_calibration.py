"""The `router-calibration` stage, router.calibrate, and the posterior* policies end to end on the tiny project."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import Project, invoke, make_project, run_cli

from ddmbench.config import parse_config
from ddmbench.errors import DataError
from ddmbench.models.checkpoints import TemperatureScaled, load_router
from ddmbench.pipeline.router_temperature import calibration_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The tiny project up to a temperature-scaled router and its calibration metrics."""
    project = make_project(tmp_path_factory.mktemp("calibration") / "repo", router={"calibrate": True})
    for stage in ("prepare", "train-evaluator", "cluster", "train-router", "router-calibration"):
        invoke(project.root, stage)
    yield project


@pytest.fixture
def copy_of(calibrated: Project, tmp_path: Path) -> Project:
    root = tmp_path / "repo"
    shutil.copytree(calibrated.root, root)
    return Project(root, calibrated.raw)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_calibration_metrics_by_t(calibrated: Project) -> None:
    cfg = calibrated.config()
    data = _json(calibrated.paths.router_calibration)
    assert data["t"] == cfg.analysis.accuracy_t and len(data["rows"]) == len(data["t"])
    assert data["n"] == 40 and data["full_train_images"] == data["posterior_train_images"] == 240
    temp = data["temperature"]
    assert temp["calibrate"] and temp["applied"] == temp["fitted"] > 0 and temp["fit_n"] == 40
    assert _json(calibrated.paths.model_metrics("router"))["temperature"]["value"] == temp["fitted"]
    for row in data["rows"]:
        for key in ("router", "calibrated", "posterior"):
            s = row[key]
            assert 0 <= s["accuracy"] <= 1 and 0 <= s["brier"] <= 2 and 0 <= s["ece"] <= 1 and s["nll"] >= 0
        assert row["calibrated"]["accuracy"] == row["router"]["accuracy"]       # T never moves the argmax
        assert len(row["router"]["reliability"]) == 15
        assert sum(b["count"] for b in row["router"]["reliability"]) == data["n"]
        assert row["kl_posterior_router"] >= 0 and row["kl_posterior_calibrated"] >= 0
        assert 1 - 1e-9 <= row["n_eff"]["q10"] <= row["n_eff"]["median"] <= row["n_eff"]["q90"] <= 240
        assert 0 <= row["split_half"]["tv"] <= 1 and row["subset"] is None
    medians = [row["n_eff"]["median"] for row in data["rows"]]
    assert medians[0] < medians[-1]                       # p* averages over more training images as t grows


def test_load_router_applies_the_stored_temperature(calibrated: Project) -> None:
    path = calibrated.paths.model("router")
    raw, scaled = load_router(path, calibrated=False), load_router(path)
    assert isinstance(scaled, TemperatureScaled) and not isinstance(raw, TemperatureScaled)
    assert scaled.head[-1].out_features == 2 and scaled.image_shape == raw.image_shape
    x, t = torch.randn(5, 1, 28, 28), torch.full((5,), 0.4)
    torch.testing.assert_close(scaled(x, t), raw(x, t) / scaled.temperature)


def test_rerun_is_identical_and_a_subset_reports_its_error(copy_of: Project) -> None:
    before = _json(copy_of.paths.router_calibration)
    invoke(copy_of.root, "router-calibration")
    after = _json(copy_of.paths.router_calibration)
    assert after["rows"] == before["rows"] and after["temperature"] == before["temperature"]   # seeded
    copy_of.update(posterior={"n_train": 100})
    invoke(copy_of.root, "router-calibration")
    data = _json(copy_of.paths.router_calibration)
    assert data["posterior_train_images"] == 100 and data["full_train_images"] == 240
    for row in data["rows"]:
        sub = row["subset"]
        assert sub["n_train"] == 100 and 0 <= sub["tv"] <= 1 and 0 <= sub["argmax_agreement"] <= 1


def test_the_split_is_disjoint_and_a_tiny_test_split_is_a_one_line_error() -> None:
    cfg = parse_config({"analysis": {"accuracy_n": 30}, "router": {"calibration_n": 50}})
    fit, score = calibration_split(cfg, 100)
    assert len(score) == 30 and len(fit) == 50 and not set(fit.tolist()) & set(score.tolist())
    with pytest.raises(DataError, match="test split has 3 images"):
        calibration_split(cfg, 3)


def test_stage_needs_a_trained_router(project: Project) -> None:
    invoke(project.root, "prepare")
    result = run_cli(project.root, "router-calibration")
    assert result.exit_code == 2 and "ddmbench cluster" in result.output and len(result.output.strip().splitlines()) == 1


def test_posterior_policy_routes_by_p_star_and_aligns_with_it(copy_of: Project) -> None:
    copy_of.update(policies=["full", "posterior", "posterior-top-1"])
    for expert in ("0", "1"):
        invoke(copy_of.root, "train-expert", "--expert", expert)
    invoke(copy_of.root, "features")
    for stage in ("sample", "evaluate", "analyze"):
        invoke(copy_of.root, stage, "--policy", "posterior")
    cost = _json(copy_of.paths.sample_metrics("posterior"))
    # the p* router's measured cost: per training image a float64 distance product (2 D FLOPs) and the per-cluster
    # sum (2 K FLOPs), the matmuls torch's FLOP counter sees
    assert cost["router_gflops_per_eval"] == pytest.approx(2 * (784 + 2) * 240 / 1e9)
    al = _json(copy_of.paths.analysis_metrics("posterior"))["alignment"]
    assert al["kl_posterior_router"] < 1e-3 and al["router_hit_rate"] >= 0.95 and al["hit_rate"] >= 0.95
    assert al["posterior_train_images"] == 240 and al["n_eff_median"] >= 1
    curves = _json(copy_of.paths.curves("posterior"))
    assert all(0 <= row["posterior_weight"] <= 1 + 1e-9 for row in curves)
    assert all(math.isfinite(row["n_eff_median"]) for row in curves)
    invoke(copy_of.root, "sample", "--policy", "posterior-top-1")
    assert _json(copy_of.paths.sample_metrics("posterior-top-1"))["expert_evals_per_image"] == 3  # one per step
