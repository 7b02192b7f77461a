"""`ddmbench run`: bring one policy's results up to date by running the missing upstream stages in order,
then sample, evaluate and analyze it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from ddmbench.config import Config
from ddmbench.console import console, is_rank_zero
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import stage_clock
from ddmbench.sampling.policies import PolicySpec


def plan(cfg: Config, paths: Paths, spec: PolicySpec) -> list[tuple[str, Path, Callable[[], Any]]]:
    """(stage name, output that proves it ran, how to run it) for every stage this policy needs."""
    from ddmbench.pipeline import cluster, prepare, train_evaluator, train_expert, train_monolith, train_router

    steps: list[tuple[str, Path, Callable[[], Any]]] = [
        ("prepare", paths.dataset, lambda: prepare.run(cfg, paths)),
        # the evaluator first: cluster.features=evaluator clusters in its embedding
        ("train-evaluator", paths.model("evaluator"), lambda: train_evaluator.run(cfg, paths)),
        ("cluster", paths.clusters, lambda: cluster.run(cfg, paths)),
    ]
    if spec.uses_router:
        steps.append(("train-router", paths.model("router"), lambda: train_router.run(cfg, paths)))
    if spec.uses_experts:
        for k in cfg.experts:
            steps.append((f"train-expert@{k}", paths.expert(k), lambda k=k: train_expert.run(cfg, paths, k)))
    else:
        steps.append(("train-monolith", paths.model("monolith"), lambda: train_monolith.run(cfg, paths)))
    return steps


def run_policy(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any] | None:
    """Train what is missing, then sample, evaluate and analyze. Under DDP only rank zero does the last three.

    Returns the evaluate metrics with the analyze metrics under "analysis"."""
    from ddmbench.pipeline import analyze, evaluate, sample

    for name, output, step in plan(cfg, paths, spec):
        if not output.exists():
            if is_rank_zero():
                console.print(f"[bold]{name}[/]: {output.relative_to(paths.root)} is missing, running it")
            with stage_clock():  # each stage's MLflow run starts with its own work
                step()
    if not is_rank_zero():
        return None
    with stage_clock():
        sample.run(cfg, paths, spec)
    with stage_clock():
        evaluated = evaluate.run(cfg, paths, spec)
    with stage_clock():
        return {**evaluated, "analysis": analyze.run(cfg, paths, spec)}


def print_result(spec: PolicySpec, m: dict[str, Any]) -> None:
    table = Table(title=f"policy {spec.label}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    kid = m.get("kid_unbiased", m["kid"])  # kid_ci95 is the interval of the unbiased all-pairs KID
    fid_ci, kid_ci = m.get("fid_ci95") or (m["fid"], m["fid"]), m.get("kid_ci95") or (kid, kid)
    rows = [("FID [95% CI]", f"{m['fid']:.2f} [{fid_ci[0]:.2f}, {fid_ci[1]:.2f}]"),
            ("KID (all pairs) [95% CI]", f"{kid:.4f} [{kid_ci[0]:.4f}, {kid_ci[1]:.4f}]"),
            ("FID floor (real train images)", f"{m['fid_reference_train']:.2f}"),
            ("expert evals / image", f"{m['cost']['expert_evals_per_image']:.1f}"),
            ("router evals / image", f"{m['cost']['router_evals_per_image']:.1f}"),
            ("GFLOPs / image", f"{m['cost']['gflops_per_image']:.3f}"),
            ("sampling wall time (s)", f"{m['cost']['wall_time_s']:.1f}"),
            ("images / s", f"{m['cost']['images_per_s']:.1f}"),
            ("classifier confidence", f"{m['confidence']:.3f}"), ("class entropy (nats)", f"{m['class_entropy']:.3f}")]
    a = m.get("analysis")
    if a is not None:
        for key, amp in a["amplification"].items():
            rows.append((f"amplification {key.replace('_', ' = ')} (mean [95% CI])",
                         f"{amp['mean']:.3g} [{amp['mean_ci95'][0]:.3g}, {amp['mean_ci95'][1]:.3g}]"))
        conv = a["convergence"]
        rows += [("local Lipschitz (mean over t)", f"{a['lipschitz']['mean']:.3g}"),
                 (f"RMS error vs {conv['reference_steps']} steps", f"{conv['error_at_nfe']['mean']:.3g}"),
                 ("empirical order", "–" if conv["order"] is None else f"{conv['order']:.2f}")]
        if a.get("alignment") and a["alignment"]["hit_rate"] is not None:
            rows.append(("alignment hit rate", f"{a['alignment']['hit_rate']:.3f}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
