"""Per-expert accuracy: known answers with analytic experts and an exact router, the stage on
the tiny project, and its config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import Project, run_cli

from ddmbench.analysis.expert_accuracy import BY_EXPERT_KEYS, POSTERIOR_KEYS, ROW_KEYS, expert_accuracy, summarise
from ddmbench.analysis.posterior import EmpiricalPosterior
from ddmbench.config import parse_config
from ddmbench.errors import ConfigError
from ddmbench.report.tables import expert_accuracy as accuracy_table

SHAPE = (1, 4, 4)


def _bcast(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


class PointExpert:
    """The exact velocity of data concentrated on one image c: x_t = (1-t) c + t eps, so v = eps - c = (x_t - c) / t."""

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - self.c) / _bcast(t)


class BayesRouter:
    """The exact posterior over point clusters c_j (equal priors): log p(j | x_t) = -|x_t - (1-t) c_j|^2 / (2 t^2) + const."""

    def __init__(self, centres: list[torch.Tensor]) -> None:
        self.centres = centres

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = _bcast(t)
        return torch.stack([-(x - (1 - tb) * c).square().flatten(1).sum(1) / (2 * t ** 2) for c in self.centres], 1)


def _toy(n_per: int = 60, k: int = 3) -> tuple[list[PointExpert], BayesRouter, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = [torch.randn(SHAPE, generator=g) for _ in range(k)]
    x0 = torch.cat([c.expand(n_per, *SHAPE) for c in centres])
    cluster = torch.arange(k).repeat_interleave(n_per)
    return [PointExpert(c) for c in centres], BayesRouter(centres), x0, cluster


def test_oracle_expert_is_exact_and_router_selection_beats_the_rest() -> None:
    experts, router, x0, cluster = _toy()
    data = expert_accuracy(experts, router, x0, cluster, [0.1, 0.5, 0.9], seed=0)
    assert data["t"] == [0.1, 0.5, 0.9] and data["n"] == 180 and data["k"] == 3
    for row in data["rows"]:
        assert set(row) == {"t", *ROW_KEYS, *BY_EXPERT_KEYS}
        assert row["oracle_expert"] < 1e-10                       # expert j is exact on cluster j
        assert row["full_ensemble"] >= row["oracle_expert"]
        assert row["selected_top1"] < row["not_selected_top1"]
        assert row["selected_top2"] < row["not_selected_top2"]
        assert row["best_single_expert"] > row["oracle_expert"]
    low = data["rows"][0]                                         # t = 0.1: clusters are far apart in x_t
    assert low["router_top1_is_oracle"] == 1.0 and low["selected_top1"] < 1e-10
    high = data["rows"][-1]                                       # t = 0.9: the posterior spreads over experts
    assert high["full_ensemble"] > 1e-3 > high["oracle_expert"] and high["router_top1_is_oracle"] < 1.0


def test_p_star_grouping_finds_the_covering_expert() -> None:
    # p* over the three training points (one per cluster, equal priors) is exactly the Bayes router here
    experts, router, x0, cluster = _toy()
    centres = torch.stack([e.c for e in experts])
    post = EmpiricalPosterior(centres, torch.arange(3), 3)
    data = expert_accuracy(experts, router, x0, cluster, [0.1, 0.9], seed=0,
                           posterior=lambda x, t: post(x, t).log_p.exp())
    low, high = data["rows"]
    assert set(low) == {"t", *ROW_KEYS, *BY_EXPERT_KEYS, *POSTERIOR_KEYS}
    assert low["posterior_top1"] < 1e-10 < low["not_posterior_top1"]             # the covering expert is exact
    assert low["router_top1_is_posterior_top1"] == 1.0 and high["router_top1_is_posterior_top1"] == 1.0
    assert low["posterior_top1"] <= low["posterior_weighted"] <= low["not_posterior_top1"]
    assert "posterior_top1" not in expert_accuracy(experts, router, x0, cluster, [0.5], seed=0)["rows"][0]
    headers, _ = accuracy_table(data)
    assert "argmax-p* expert" in headers and "router top-1 = argmax p*" in headers


def test_expert_accuracy_is_seeded() -> None:
    experts, router, x0, cluster = _toy(10)
    a = expert_accuracy(experts, router, x0, cluster, [0.7], seed=1)
    assert expert_accuracy(experts, router, x0, cluster, [0.7], seed=1, batch=7) == a   # batching changes nothing
    assert expert_accuracy(experts, router, x0, cluster, [0.7], seed=2) != a


def test_summarise_groups_by_router_rank() -> None:
    e = torch.tensor([[1.0, 2.0, 3.0], [6.0, 5.0, 4.0]])
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])  # top-1: expert 0 and expert 2
    row = summarise(0.5, e, p, torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    assert row["selected_top1"] == pytest.approx(2.5) and row["not_selected_top1"] == pytest.approx(4.0)
    assert row["selected_top2"] == pytest.approx(3.0) and row["not_selected_top2"] == pytest.approx(4.5)
    assert row["oracle_expert"] == pytest.approx(3.0) and row["best_single_expert"] == pytest.approx(3.5)
    assert row["router_top1_is_oracle"] == 0.5 and row["full_ensemble"] == 0.5
    two = summarise(0.5, e[:, :2], p[:, :2], torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    assert two["not_selected_top2"] is None                     # K = 2: top-2 selects every expert


def test_specialisation_known_answer_and_a_regime_without_it() -> None:
    e = torch.tensor([[1.0, 2.0, 3.0], [6.0, 5.0, 4.0]])
    row = summarise(0.5, e, torch.full((2, 3), 1 / 3), torch.zeros(2), torch.tensor([0, 1]))
    # cluster 0 (image 0): own expert 1, others (2 + 3) / 2; cluster 1 (image 1): own 5, others (6 + 4) / 2;
    # cluster 2 has no image
    assert row["own_cluster_by_expert"] == [1.0, 5.0, None] and row["other_experts_by_expert"] == [2.5, 5.0, None]
    assert row["own_cluster"] == pytest.approx(3.0) and row["other_experts"] == pytest.approx(3.75)
    assert row["specialisation"] == pytest.approx(1.25)
    experts, router, x0, cluster = _toy(20)
    low, high = expert_accuracy(experts, router, x0, cluster, [0.1, 0.9], seed=0)["rows"]
    assert low["own_cluster"] < 1e-10 < low["other_experts"] and high["specialisation"] > 1   # specialised
    same = [experts[0]] * 3                                       # three copies of one expert: interchangeable
    flat = expert_accuracy(same, router, x0, cluster, [0.1, 0.9], seed=0)["rows"]
    assert all(r["specialisation"] == pytest.approx(1.0, rel=1e-6) for r in flat)
    assert all(r["own_cluster_by_expert"] == pytest.approx(r["other_experts_by_expert"], rel=1e-6) for r in flat)
    headers, _ = accuracy_table({"rows": [low]})
    assert "specialisation (others / own)" in headers


def test_table_has_one_row_per_t_and_marks_missing_cells() -> None:
    experts, router, x0, cluster = _toy(5, k=2)
    data = expert_accuracy(experts, router, x0, cluster, [0.2, 0.8], seed=0)
    headers, rows = accuracy_table(json.loads(json.dumps(data)))  # exactly what the report reads back
    assert len(headers) == 12 and [r[0] for r in rows] == ["0.20", "0.80"]
    assert all(len(r) == len(headers) for r in rows)
    assert "–" in rows[0]  # K = 2: nothing is left outside the top-2


@pytest.mark.parametrize("analysis, key", [({"accuracy_n": 0}, "analysis.accuracy_n"),
                                           ({"accuracy_n": "many"}, "analysis.accuracy_n"),
                                           ({"accuracy_t": [0.5, 1.5]}, "analysis.accuracy_t"),
                                           ({"accuracy_t": []}, "analysis.accuracy_t"),
                                           ({"lipschitz": 3}, "analysis.lipschitz")])
def test_bad_analysis_params_are_one_line_config_errors(analysis: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"analysis": analysis})
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_a_bad_accuracy_n_in_one_line(project: Project) -> None:
    project.update(analysis={"accuracy_n": -5})
    result = run_cli(project.root, "expert-accuracy")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "analysis.accuracy_n" in lines[0] and "-5" in lines[0]


def test_stage_needs_the_trained_models_first(project: Project) -> None:
    result = run_cli(project.root, "expert-accuracy")
    assert result.exit_code == 2 and "ddmbench prepare" in result.output


def test_nan_free_rows_are_json_numbers() -> None:
    experts, router, x0, cluster = _toy(4)
    data = expert_accuracy(experts, router, x0, cluster, [1.0], seed=0)
    values = [v for value in data["rows"][0].values() for v in (value if isinstance(value, list) else [value])]
    assert all(math.isfinite(v) for v in values if v is not None)
