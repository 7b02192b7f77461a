"""End to end on the tiny synthetic project: `ddmbench run` reproduces what DVC finds stale, samples and evaluates;
sampling is reproducible; sparse policies cost what they should; experts' saved EMA weights are trained."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import Project, invoke, make_dvc_project, run_cli

from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.io import load_tensors
from ddmbench.models import nets
from ddmbench.models.checkpoints import load_velocity_net
from ddmbench.pipeline.flow_training import heldout_loss
from ddmbench.pipeline.paths import Paths
from ddmbench.report.summary import contrast_entries
from ddmbench.train.trainer import seed_everything, seed_for

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    """`ddmbench run --policy full` from scratch through DVC (prepare, cluster, evaluator, router, 2 experts, the
    monolith that dvc.yaml's sample stage also reads, sample, evaluate, analyze)."""
    project = make_dvc_project(tmp_path_factory.mktemp("e2e") / "repo")
    output = invoke(project.root, "run", "--policy", "full")
    yield project, output


@pytest.fixture
def copy_of(trained: tuple[Project, str], tmp_path: Path) -> Project:
    """A private copy of the trained project, so a test's outputs never leak into another's."""
    project, _ = trained
    root = tmp_path / "repo"
    shutil.copytree(project.root, root)
    return Project(root, project.raw)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_full_trains_everything_and_evaluates(trained: tuple[Project, str]) -> None:
    project, output = trained
    paths = project.paths
    for stage in ("prepare", "cluster@here", "train-evaluator", "train-router@here", "train-expert@0", "train-expert@1"):
        assert f"{stage}:" in output, stage
    assert "sample@top-1" not in output and "report:" not in output  # only the stages `full` needs
    for path in (paths.dataset, paths.clusters, paths.model("evaluator"), paths.model("router"),
                 paths.expert(0), paths.expert(1), paths.samples("full")):
        assert path.exists(), path
    m = _json(paths.eval_metrics("full"))
    assert m["policy"] == "full" and m["n_fake"] == 32 and m["n_real"] == 40
    for key in ("fid", "kid", "kid_std", "fid_reference_train", "confidence", "class_entropy"):
        assert math.isfinite(m[key]), key
    assert m["fid"] >= 0 and m["fid_reference_train"] >= 0
    assert "FD, classifier features" in output and "policy full" in output  # the rich table


def test_full_costs_K_expert_evaluations_per_step(trained: tuple[Project, str]) -> None:
    project, _ = trained
    cost = _json(project.paths.sample_metrics("full"))
    assert cost["nfe_per_sample"] == 3
    assert cost["expert_evals_per_image"] == 2 * 3 and cost["expert_evals_by_expert"] == [32 * 3, 32 * 3]
    assert cost["router_evals_per_image"] == 3
    assert _json(project.paths.eval_metrics("full"))["cost"]["expert_evals_per_image"] == 6


def test_samples_file_contents(trained: tuple[Project, str]) -> None:
    project, _ = trained
    blob = load_tensors(project.paths.samples("full"), "sample")
    assert blob["images"].shape == (32, 1, 28, 28) and blob["images"].dtype == torch.uint8
    assert blob["seeds"].tolist() == list(range(32))
    assert (blob["cluster"] == -1).all()
    assert blob["images"].float().std() > 0  # not a constant image


def _tensors(blob: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) samples file, by dotted key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in blob.items():
        if isinstance(value, dict):
            out.update(_tensors(value, f"{prefix}{key}."))
        elif torch.is_tensor(value):
            out[f"{prefix}{key}"] = value
    return out


def test_sample_twice_is_byte_identical(copy_of: Project, trained: tuple[Project, str]) -> None:
    copy_of.update(sample={"trace": True, "probe_n": 4})  # routing traces must replay too
    blobs = []
    for _ in range(2):
        invoke(copy_of.root, "sample", "--policy", "sample-1")
        blobs.append(_tensors(load_tensors(copy_of.paths.samples("sample-1"), "sample")))
    assert {"images", "seeds", "cluster", "trace.w", "trace.p"} <= set(blobs[0])
    assert blobs[0].keys() == blobs[1].keys()
    for key in blobs[0]:
        assert blobs[0][key].dtype == blobs[1][key].dtype and torch.equal(blobs[0][key], blobs[1][key]), key
    # and the same images as the `full` run's file for its own policy, re-sampled here
    invoke(copy_of.root, "sample", "--policy", "full")
    again = _tensors(load_tensors(copy_of.paths.samples("full"), "sample"))
    first = _tensors(load_tensors(trained[0].paths.samples("full"), "sample"))
    for key in ("images", "seeds", "cluster"):
        assert torch.equal(again[key], first[key]), key


def test_evaluate_is_reproducible(copy_of: Project, trained: tuple[Project, str]) -> None:
    invoke(copy_of.root, "evaluate", "--policy", "full")
    assert _json(copy_of.paths.eval_metrics("full")) == _json(trained[0].paths.eval_metrics("full"))


def test_seed_changes_the_samples(copy_of: Project, trained: tuple[Project, str]) -> None:
    copy_of.update(seed=1)
    invoke(copy_of.root, "sample", "--policy", "full")
    blob = load_tensors(copy_of.paths.samples("full"), "sample")
    assert blob["seeds"].tolist() == list(range(1_000_000, 1_000_032))
    assert not torch.equal(blob["images"], load_tensors(trained[0].paths.samples("full"), "sample")["images"])


def test_sparse_and_oracle_policies_cost_one_expert_per_step(copy_of: Project) -> None:
    invoke(copy_of.root, "sample", "--policy", "top-1")
    top = _json(copy_of.paths.sample_metrics("top-1"))
    assert top["expert_evals_per_image"] == 3 and top["router_evals_per_image"] == 3
    invoke(copy_of.root, "sample", "--policy", "sample", "--k", "1")
    sampled = _json(copy_of.paths.sample_metrics("sample-1"))
    assert sampled["expert_evals_per_image"] == 3
    invoke(copy_of.root, "sample", "--policy", "oracle")
    oracle = _json(copy_of.paths.sample_metrics("oracle"))
    assert oracle["expert_evals_per_image"] == 3 and oracle["router_evals_per_image"] == 0
    blob = load_tensors(copy_of.paths.samples("oracle"), "sample")
    assert set(blob["cluster"].tolist()) <= {0, 1}
    assert oracle["expert_evals_by_expert"] == [3 * int((blob["cluster"] == j).sum()) for j in (0, 1)]


def test_report_after_all_policies(copy_of: Project) -> None:
    invoke(copy_of.root, "sample", "--policy", "top-1")
    invoke(copy_of.root, "evaluate", "--policy", "top-1")
    invoke(copy_of.root, "analyze", "--policy", "top-1")
    output = invoke(copy_of.root, "report")
    report = copy_of.paths.report_md.read_text()
    assert "| full |" in report and "| top-1 |" in report
    assert copy_of.paths.sample_grid("full").exists() and copy_of.paths.sample_grid("top-1").exists()
    assert "report.md" in output


def test_run_again_trains_nothing(copy_of: Project) -> None:
    weights = {p: p.stat().st_mtime_ns for p in (copy_of.root / "outputs").rglob("*.pt") if "samples" not in p.parts}
    output = invoke(copy_of.root, "run", "--policy", "top-1")
    for stage in ("prepare", "train-evaluator", "cluster@here", "train-router@here", "train-expert@0", "train-expert@1"):
        assert f"{stage}: up to date" in output, stage
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    assert math.isfinite(_json(copy_of.paths.eval_metrics("top-1"))["fid"])


def test_monolith_policy_needs_only_the_monolith(copy_of: Project) -> None:
    from ddmbench.pipeline.run import AdhocPaths

    output = invoke(copy_of.root, "run", "--policy", "monolith")  # not in `policies`: sampled outside DVC
    assert "train-monolith@here: up to date" in output and "train-expert" not in output and "train-router" not in output
    cost = _json(AdhocPaths(copy_of.root).sample_metrics("monolith"))
    assert cost["expert_evals_per_image"] == 3 and cost["router_evals_per_image"] == 0
    assert _json(copy_of.paths.model_metrics("monolith"))["steps"] == 20


@pytest.mark.parametrize("k", [0, 1])
def test_saved_expert_ema_weights_are_trained(trained: tuple[Project, str], k: int) -> None:
    """The weights written by train-expert (the EMA) fit held-out data far better than the initial network."""
    project, _ = trained
    cfg, paths = project.config(), Paths(project.root)
    ds = load_prepared(paths.dataset)
    clusters = load_tensors(paths.clusters, "cluster")
    heldout = to_model_space(ds["test_x"][clusters["test_assignments"] == k])
    assert len(heldout) >= 10
    seed = seed_for(cfg, 10 + k)
    seed_everything(seed)
    initial = nets.build_velocity_net(cfg.expert.net).eval()  # the network training started from
    saved = load_velocity_net(paths.expert(k), "expert", "train-expert")
    initial_loss, saved_loss = heldout_loss(initial, heldout, seed), heldout_loss(saved, heldout, seed)
    metrics = _json(paths.expert_metrics(k))
    assert saved_loss == pytest.approx(metrics["heldout_loss"], rel=1e-5)
    assert saved_loss < 0.5 * initial_loss, (saved_loss, initial_loss)
    assert metrics["steps"] == 30 and metrics["world_size"] == 1
    assert metrics["n_train"] == int((clusters["assignments"] == k).sum())


def test_evaluate_reports_intervals_precision_recall_and_per_sample_quality(trained: tuple[Project, str]) -> None:
    project, _ = trained
    m = _json(project.paths.eval_metrics("full"))
    assert m["jackknife_groups"] == project.config().evaluate.groups
    assert m["evaluator_sha256"] == _json(project.paths.model_metrics("evaluator"))["evaluator_sha256"]
    assert m["fid_estimand"].startswith("FID at N = 32") and m["fid_inf_estimand"].startswith("FID_inf")
    for key in ("fid", "kid_unbiased"):
        lo, hi = m[f"{key.split('_')[0]}_ci95"]
        assert lo <= m[key] <= hi, key
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0 and m["pr_k"] == 3
    quality = load_tensors(project.paths.quality("full"), "evaluate")
    assert set(quality) == {"confidence", "nn_distance", "seeds", "features", "evaluator_sha256"}
    assert quality["seeds"].tolist() == list(range(32)) and quality["features"].shape[0] == 32
    assert quality["confidence"].shape == quality["nn_distance"].shape == (32,)
    assert quality["confidence"].mean().item() == pytest.approx(m["confidence"], rel=1e-5)
    assert bool((quality["nn_distance"] >= 0).all())


def test_expert_accuracy_stage_writes_the_table(copy_of: Project) -> None:
    from ddmbench.analysis.expert_accuracy import BY_EXPERT_KEYS, POSTERIOR_KEYS, ROW_KEYS
    from ddmbench.report.tables import expert_accuracy as accuracy_table

    copy_of.update(analysis={"accuracy_n": 50, "accuracy_t": [0.2, 0.8]})
    invoke(copy_of.root, "expert-accuracy")
    data = _json(copy_of.paths.expert_accuracy)
    assert data["n"] == 50 and data["k"] == 2 and data["t"] == [0.2, 0.8] and len(data["rows"]) == 2
    for row in data["rows"]:
        assert set(row) == {"t", *ROW_KEYS, *BY_EXPERT_KEYS, *POSTERIOR_KEYS}
        assert row["not_selected_top2"] is None  # K = 2
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in POSTERIOR_KEYS)
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ROW_KEYS if row[k] is not None)
        assert row["selected_top2"] == pytest.approx(0.5 * (row["selected_top1"] + row["not_selected_top1"]))
    assert [row[0] for row in accuracy_table(data)[1]] == ["0.20", "0.80"]
    invoke(copy_of.root, "expert-accuracy")
    assert _json(copy_of.paths.expert_accuracy) == data  # seeded: a re-run writes the same numbers


def test_run_also_analyzes_and_prints_stability(trained: tuple[Project, str]) -> None:
    project, output = trained
    a = _json(project.paths.analysis_metrics("full"))
    assert set(a["amplification"]) == {"eps_0.1", "eps_1"}
    assert a["convergence"]["steps"] == [1, 3] and a["convergence"]["reference_steps"] == 6
    assert 0 <= a["alignment"]["hit_rate"] <= 1 and a["disagreement"]["router_weighted"] > 0
    d = a["disagreement"]                          # quantiles cut within the evaluator's predicted class
    assert d["stratified_by"] == "predicted class" and sum(q["n"] for q in d["by_quantile"]) + d["n_unstratified"] == 32
    assert "fid" not in d["by_quantile"][0] and {"confidence", "nn_distance"} <= set(d["by_quantile"][0])
    assert "amplification eps = 1" in output and "empirical order" in output


def test_analyze_is_deterministic_and_report_has_every_table(copy_of: Project) -> None:
    copy_of.update(policies=["monolith", "full", "top-1"],
                   report={"primary": [{"policy": "top-1", "versus": "full", "metrics": ["fid", "amplification@1"]}]})
    for label in ("monolith", "top-1"):
        invoke(copy_of.root, "run", "--policy", label)
    first = _json(copy_of.paths.analysis_metrics("top-1"))
    invoke(copy_of.root, "analyze", "--policy", "top-1")
    assert _json(copy_of.paths.analysis_metrics("top-1")) == first        # same seed, same numbers
    assert first["disagreement"]["per_sample_mean"] == 0                   # one expert: nothing to disagree
    assert "alignment" not in _json(copy_of.paths.analysis_metrics("monolith"))
    invoke(copy_of.root, "expert-accuracy")
    invoke(copy_of.root, "router-calibration")
    contrast_output = invoke(copy_of.root, "contrast")
    contrast = _json(copy_of.paths.contrast_metrics)
    assert contrast["reference"] == "full" and set(contrast["contrasts"]) == {"monolith", "top-1"}
    top1 = contrast["contrasts"]["top-1"]
    fid_gap = _json(copy_of.paths.eval_metrics("top-1"))["fid"] - _json(copy_of.paths.eval_metrics("full"))["fid"]
    assert top1["fid"]["plug_in_delta"] == pytest.approx(fid_gap, rel=1e-5)  # same features, same FID as evaluate
    assert all(0 <= top1[k]["p_value"] <= 1 and top1[k]["estimand"] for k in ("fid", "kid", "convergence_error"))
    amp_gap = first["amplification"]["eps_1"]["mean"] - _json(copy_of.paths.analysis_metrics("full"))[
        "amplification"]["eps_1"]["mean"]
    assert top1["amplification"]["eps_1"]["estimate"] == pytest.approx(amp_gap, abs=1e-9)
    assert "paired by seed" in contrast_output
    assert all("p_value" in e for e in contrast_entries(contrast).values())
    args = ("separation", "--policy", "top-1", "--size", "16", "--size", "32", "--seeds", "2", "--seeds", "8",
            "--resamples", "5")
    separation_output = invoke(copy_of.root, *args)  # separation corrects its looks on the contrast's p-values
    study = _json(copy_of.paths.reports / "separation-top-1.json")["metrics"]
    assert [r["n"] for r in study["fid"]["rows"]] == [16, 32] and study["fid"]["alpha_per_look"] == 0.05 / 2
    assert [r["n"] for r in study["amplification@1"]["rows"]] == [2, 8]
    assert study["amplification@1"]["rows"][-1]["estimate"] == pytest.approx(amp_gap, abs=1e-9)
    assert "planning tool" in separation_output
    output = invoke(copy_of.root, "report")
    md = copy_of.paths.report_md.read_text()
    for title in ("## Summary", "## Table 1", "## Table 2", "## Table 3", "## Table 4", "## Table 5", "## Table 6"):
        assert title in md
    assert "Not computed" not in md and "The dissociation" in md
    # every difference in contrast.json carries a p-value, so the declared primaries are judged
    assert "Primary: top-1 − full in fid" in md and "Primary: top-1 − full in amplification@1" in md
    assert "| top-1 | fid | primary |" in md and "secondary" in md
    html = copy_of.paths.report_html.read_text()
    assert html.count("<table>") == 8 and html.count("data:image/png;base64,") >= 3 + 5 and "](" not in html
    assert "## Router calibration by t" in md and copy_of.paths.figure("router_reliability").stat().st_size > 1000
    for name in ("lipschitz", "hit_rate", "posterior_weight", "disagreement_router"):
        rows = _json(copy_of.paths.plot_data(name))
        assert {r["policy"] for r in rows} <= {"monolith", "full", "top-1"} and all(name in r for r in rows)
    assert {r["policy"] for r in _json(copy_of.paths.plot_data("lipschitz"))} == {"monolith", "full", "top-1"}
    assert copy_of.paths.figure("fid_vs_amplification").stat().st_size > 1000
    assert "dissociation" in output


def test_report_names_the_missing_analysis(copy_of: Project) -> None:
    copy_of.paths.analysis_metrics("full").unlink()
    result = run_cli(copy_of.root, "report")
    assert result.exit_code == 2
    assert "ddmbench analyze --policy full" in result.output and "Traceback" not in result.output
