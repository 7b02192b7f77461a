"""benchmarks/cross_run_quality.py: two runs' samples scored in one evaluator's space, paired by seed; a run
against itself differs by exactly 0, a sample set from other seeds is refused."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cross_run_quality", REPO / "benchmarks" / "cross_run_quality.py")
cross = importlib.util.module_from_spec(spec)
sys.modules["cross_run_quality"] = cross
spec.loader.exec_module(cross)


@pytest.mark.slow
def test_a_run_against_itself_and_against_another_sampler(project) -> None:
    from conftest import save_untrained_models

    from ddmbench.io import load_tensors, save_tensors
    from ddmbench.pipeline import cluster, features, prepare, sample
    from ddmbench.sampling.policies import parse_policy

    project.update(policies=["full", "top-2"], cluster={"k": 3}, experts=[0, 1, 2])
    cfg, paths = project.config(), project.paths
    prepare.run(cfg, paths)
    cluster.run(cfg, paths)
    save_untrained_models(cfg, paths, evaluator=True)
    features.run(cfg, paths)
    for label in ("full", "top-2"):
        sample.run(cfg, paths, parse_policy(label))
    same = cross.compare(project.root, project.root, ["full", "top-2"], cfg.evaluate.groups)
    for row in same["rows"]:
        for metric in ("fid", "kid"):
            assert row["delta_b_minus_a"][metric]["estimate"] == 0 and row["sampling_half_width_a"][metric] > 0
    assert same["top2_minus_full"]["a"]["kid"] == same["top2_minus_full"]["b"]["kid"]

    other = project.root.parent / "other"
    shutil.copytree(project.root, other)
    swapped = load_tensors(paths.samples("top-2"), "sample")             # run B's "full" is A's top-2 set
    save_tensors(other / "outputs" / "samples" / "full.pt", swapped)
    moved = cross.compare(project.root, other, ["full"], cfg.evaluate.groups)
    assert moved["rows"][0]["delta_b_minus_a"]["kid"]["estimate"] == pytest.approx(
        same["top2_minus_full"]["a"]["kid"]["estimate"])
    save_tensors(other / "outputs" / "samples" / "full.pt", {**swapped, "seeds": swapped["seeds"] + 1})
    with pytest.raises(SystemExit, match="other seeds"):
        cross.compare(project.root, other, ["full"], cfg.evaluate.groups)
