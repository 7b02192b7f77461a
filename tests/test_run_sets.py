"""benchmarks/ablation_grid.py and benchmarks/seed_runs.py: each cell's params are the profile with only the
declared changes (seed, K, clustering, compute-matched expert steps), and a set whose runs all finished is
skipped on resume without running anything."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ablation_grid = _load("ablation_grid")
seed_runs = sys.modules["seed_runs"]


def _without(params: dict, *paths: str) -> dict:
    out = yaml.safe_load(yaml.safe_dump(params))
    for path in paths:
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node[key]
        node.pop(leaf)
    return out


@pytest.mark.parametrize("k", ablation_grid.KS)
@pytest.mark.parametrize("method", ablation_grid.METHODS)
def test_a_cell_changes_only_seed_k_clustering_and_matched_steps(k: int, method: str, tmp_path: Path) -> None:
    profile = yaml.safe_load((REPO / "params" / "ablation.yaml").read_text())
    before = yaml.safe_dump(profile)
    cell = ablation_grid.cell_params(profile, k, method, 2, tmp_path / "data")
    assert yaml.safe_dump(profile) == before                                  # the profile is not mutated
    assert (cell["seed"], cell["cluster"]["k"], cell["cluster"]["method"]) == (2, k, method)
    assert cell["experts"] == list(range(k))
    # compute matching: K experts x expert.steps = the monolith's steps (null = K x expert.steps) = 600
    assert k * cell["expert"]["steps"] == ablation_grid.EXPERT_STEPS_TOTAL and cell["monolith"]["steps"] is None
    assert Path(cell["data"]["root"]).is_absolute()
    changed = ("seed", "cluster.k", "cluster.method", "experts", "expert.steps", "data.root")
    assert _without(cell, *changed) == _without(profile, *changed)


def test_seeded_sets_the_seed_and_an_absolute_data_root_only(tmp_path: Path) -> None:
    profile = yaml.safe_load((REPO / "params" / "fashion-dit.yaml").read_text())
    run = seed_runs.seeded(profile, 7, Path("data"))
    assert run["seed"] == 7 and Path(run["data"]["root"]).is_absolute()
    assert _without(run, "seed", "data.root") == _without(profile, "seed", "data.root")


def test_finished_runs_are_skipped_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cells = [(f"s{seed}", {"seed": seed}) for seed in (0, 1)]
    for name, _ in cells:
        (tmp_path / name / "metrics").mkdir(parents=True)
        (tmp_path / name / "metrics" / "contrast.json").write_text("{}")
    assert seed_runs.run_cells(REPO, cells, tmp_path, timeout_min=1) == 0
    assert capsys.readouterr().out.splitlines() == ["s0: done before, skipped", "s1: done before, skipped"]


def test_a_run_logs_every_line_with_its_elapsed_seconds(tmp_path: Path) -> None:
    """The per-run log carries each output line with the seconds since the start (stage wall times are read off
    it); a failing repro (here a stand-in `ddmbench` in the copy, which runs its own code) is reported as failed
    with its last lines."""
    work = tmp_path / "work"
    (work / "ddmbench").mkdir(parents=True)
    (work / "ddmbench" / "__main__.py").write_text("print('stage one')\nprint('stage two')\nraise SystemExit(3)\n")
    ok, tail = sys.modules["gate_power"].repro(work, {"seed": 0}, timeout_s=60, log=tmp_path / "s0.log")
    lines = (tmp_path / "s0.log").read_text().splitlines()
    assert not ok and tail and lines
    assert all(re.match(r"^\[ *\d+\.\ds\] ", line) for line in lines)
    assert tail == ["stage one", "stage two"] and [line.split("] ", 1)[1] for line in lines] == tail
    assert yaml.safe_load((work / "params.yaml").read_text()) == {"seed": 0}
