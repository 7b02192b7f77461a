"""Regression against committed baseline metrics: flatten metrics JSON, compare with per-metric tolerances.

A metric passes when |current - baseline| <= abs_tol + rel_tol * |baseline|. Tolerances come from the
first matching rule in ``TOLERANCES`` and are written into the baseline file, so a baseline records
what it promised. Timings are never compared (they measure the machine, not the harness).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddmbench.errors import ArtifactError

# (glob over "<file relative to metrics/>:<dotted key>", abs_tol, rel_tol); None = not compared; first match wins.
# Noisy metrics: SPREAD_MULTIPLE x the widest seed-to-seed range among the rule's metrics, measured with
# `ddmbench spread` on the CI profile (reports/baseline/spread-ci.json; method in reports/baseline/README.md),
# rounded up, floor 0.02. Counts fixed by construction are exact (their measured range is 0).
# A metric no rule matches (a new metric family) is not gated: `compare` lists it until a rule is added here.
Rule = tuple[str, float, float] | tuple[str, None, None]
TOLERANCES: list[Rule] = [
    ("*:wall_time_s", None, None), ("*:images_per_s", None, None), ("*:cost.wall_time_s", None, None),
    ("*:cost.images_per_s", None, None), ("*:train_*", None, None), ("*:world_size", None, None),
    ("*:class_entropy_max", None, None), ("*:resumed_from_step", None, None),
    ("*:expert_gflops_per_eval", 0.0, 1e-9), ("*:router_gflops_per_eval", 0.0, 1e-9),
    ("sample/*:nfe_per_sample", 0.0, 0.0), ("sample/*:nfe_steps", 0.0, 0.0), ("sample/*:n", 0.0, 0.0),
    ("evaluate/*:n_*", 0.0, 0.0),
    ("*:cost.nfe_per_sample", 0.0, 0.0),
    # router-dependent cost: widest range nucleus 27 % / 26 %, threshold 13 % / 12 %; fixed for the other policies
    ("*nucleus-*:*expert_evals_per_image", 0.0, 0.55), ("*nucleus-*:*gflops_per_image", 0.0, 0.52),
    ("*threshold-*:*expert_evals_per_image", 0.0, 0.26), ("*threshold-*:*gflops_per_image", 0.0, 0.24),
    ("*expert_evals_per_image", 0.0, 0.0), ("*router_evals_per_image", 0.0, 0.0), ("*gflops_per_image", 0.0, 1e-9),
    ("sample/*:expert_evals_by_expert.*", None, None),
    # measured widest range: FID 27 % (top-1), KID 0.66, FID of real train images 22 %
    ("evaluate/*:fid", 0.0, 0.54), ("evaluate/*:kid", 1.4, 0.0), ("evaluate/*:kid_std", None, None),
    ("evaluate/*:fid_reference_train", 0.0, 0.44),
    ("evaluate/*:confidence", 0.16, 0.0), ("evaluate/*:class_entropy", 0.39, 0.0),  # ranges 0.076, 0.19
    # evaluate's intervals, bootstrap biases, precision/recall and the analyses: 2 x the widest range over
    # seeds 0-2 of the CI profile (reports/baseline/spread-ci-analyses.json); counts exact
    ("evaluate/*:jackknife_groups", 0.0, 0.0), ("evaluate/*:pr_k", 0.0, 0.0), ("evaluate/*:pr_n_real", 0.0, 0.0),
    ("evaluate/*:fid_ci95.*", 0.0, 0.50),
    ("evaluate/*:kid_ci95.*", 1.3, 0.0), ("evaluate/*:kid_unbiased", 1.3, 0.0),
    # FID_inf (can sit near 0, where a relative tolerance means nothing), its bias and the jackknife SEs:
    # not gated until a spread over seeds sets their tolerances
    ("evaluate/*:fid_inf*", None, None), ("evaluate/*:fid_bias_at_n", None, None), ("evaluate/*:*_se", None, None),
    ("evaluate/*:precision", 0.23, 0.0), ("evaluate/*:recall", 0.35, 0.0),
    ("analyze/*:n", 0.0, 0.0), ("analyze/*:convergence.steps.*", 0.0, 0.0),
    ("analyze/*:convergence.reference_steps", 0.0, 0.0), ("analyze/*:lipschitz.delta", 0.0, 0.0),
    ("analyze/*:disagreement.by_quantile.*.n", 0.0, 0.0), ("analyze/*:disagreement.by_quantile.*.quantile", 0.0, 0.0),
    # quantile groups of N/5 = 60 samples at the CI size: their FIDs and means are too noisy to gate
    ("analyze/*:disagreement.by_quantile.*", None, None), ("analyze/*:disagreement.spearman_*", 0.75, 0.0),
    ("analyze/*:disagreement.*", 0.014, 0.0),
    ("analyze/*:convergence.order", 0.44, 0.0), ("analyze/*:convergence.*", 0.084, 0.0),
    ("analyze/*:amplification.*", 0.0, 0.68), ("analyze/*:lipschitz.*", 0.0, 0.29),
    ("analyze/*:alignment.*_rate", 0.25, 0.0), ("analyze/*:alignment.*", 0.0, 0.42),
    ("expert_accuracy.json:n", 0.0, 0.0), ("expert_accuracy.json:seed", 0.0, 0.0), ("expert_accuracy.json:t.*", 0.0, 0.0),
    ("expert_accuracy.json:rows.*.t", 0.0, 0.0), ("expert_accuracy.json:rows.*.router_top1_is_oracle", 0.37, 0.0),
    ("expert_accuracy.json:rows.*", 0.0, 0.21),
    # paired contrasts: differences of FIDs and per-seed analyses that are gated one by one above; only
    # their counts are checked
    ("contrast.json:*.n", 0.0, 0.0), ("contrast.json:*.bootstrap", 0.0, 0.0), ("contrast.json:*", None, None),
    ("cluster.json:sizes.*", None, None), ("cluster.json:inertia", 0.0, 0.02), ("cluster.json:*", 0.02, 0.0),
    ("evaluator.json:test_acc", 0.031, 0.0), ("evaluator.json:feature_scale", 0.0, 0.51),  # ranges 0.016, 25 %
    # router accuracy on held-out x_t: 0.072 at t = 0, 0.11 up to t = 0.5, 0.29 near pure noise (100 steps)
    ("router.json:heldout.acc_t0", 0.15, 0.0), ("router.json:heldout.acc_t0.[25]*", 0.22, 0.0),
    ("router.json:heldout.*", 0.58, 0.0),
    # per expert: k-means numbers clusters arbitrarily per seed, so the spread is measured with experts
    # matched by cluster size (held-out loss 6.5 %, n_train 0.56 %); a relabelling itself would fail
    ("*:heldout_loss", 0.0, 0.14), ("*:n_train", 0.0, 0.012),
    ("*:steps", 0.0, 0.0), ("*:params", 0.0, 0.0), ("*:k", 0.0, 0.0), ("*:pca_dim", 0.0, 0.0),
    ("*:num_features", 0.0, 0.0),
]


# Tolerances are this many times the widest seed-to-seed range (max - min) measured by `ddmbench spread`.
SPREAD_MULTIPLE = 2.0


def flatten_metrics(metrics_dir: Path) -> dict[str, float]:
    """Every finite number in every JSON file under ``metrics_dir`` as {"<file>:<dotted.key>": value}."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        raise ArtifactError(f"{metrics_dir} is not a metrics folder; run `dvc repro` first or pass the right path")
    out: dict[str, float] = {}
    for path in sorted(metrics_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc.msg})") from exc
        _walk(data, f"{path.relative_to(metrics_dir).as_posix()}:", out)
    return out


def _walk(node: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{prefix}{key}.", out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{prefix}{i}.", out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(float(node)):
        out[prefix.rstrip(".")] = float(node)


def rule_for(metric: str) -> Rule | None:
    """The first rule of ``TOLERANCES`` whose glob matches ``metric``; None if no rule covers it."""
    return next((rule for rule in TOLERANCES if fnmatch.fnmatchcase(metric, rule[0])), None)


def tolerance_for(metric: str) -> tuple[float, float] | None:
    """(abs_tol, rel_tol) of the first matching rule; None = not compared; KeyError if no rule matches."""
    rule = rule_for(metric)
    if rule is None:
        raise KeyError(metric)
    return None if rule[1] is None else (rule[1], rule[2])


def make_baseline(current: dict[str, float], *, why: str, git_commit: str, profile: str) -> dict[str, Any]:
    metrics = {}
    for name, value in sorted(current.items()):
        try:
            tol = tolerance_for(name)
        except KeyError:
            continue  # no rule covers it: `ddmbench compare` lists it as not gated
        if tol is not None:
            metrics[name] = {"value": value, "abs_tol": tol[0], "rel_tol": tol[1]}
    return {"why": why, "git_commit": git_commit, "profile": profile, "metrics": metrics}


@dataclass
class Row:
    metric: str
    baseline: float
    current: float | None
    tolerance: float

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current - self.baseline

    @property
    def passed(self) -> bool:
        return self.current is not None and abs(self.current - self.baseline) <= self.tolerance + 1e-12


def ungated(current: dict[str, float], baseline: dict[str, Any]) -> list[str]:
    """Metrics of the current run that a tolerance rule covers but the baseline does not hold (e.g. a new policy)."""
    out = []
    for name in sorted(set(current) - set(baseline.get("metrics", {}))):
        try:
            if tolerance_for(name) is not None:
                out.append(name)
        except KeyError:
            out.append(name)
    return out


def compare(current: dict[str, float], baseline: dict[str, Any]) -> list[Row]:
    """One row per baseline metric; a metric missing from ``current`` fails."""
    try:
        entries = baseline["metrics"]
        rows = [Row(name, float(e["value"]), current.get(name),
                    float(e["abs_tol"]) + float(e["rel_tol"]) * abs(float(e["value"])))
                for name, e in sorted(entries.items())]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"baseline file is malformed ({exc!r}); regenerate it with `ddmbench baseline`") from exc
    return rows


def spread(runs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Run-to-run spread of each metric over several runs of one profile (e.g. one run per seed).

    ``runs``: label -> flattened metrics (:func:`flatten_metrics`). Per metric held by every run: n,
    mean, std (ddof=1), min, max, range (max - min), the rule that gates it today and that rule's
    tolerance at the mean, and ``tol_over_range`` (how many observed ranges the tolerance allows; below
    1 means the seed-to-seed noise alone could fail the check). Metrics missing from some runs are listed.
    """
    if len(runs) < 2:
        raise ArtifactError("spread needs the metrics folders of at least 2 runs")
    names = sorted(set.intersection(*(set(m) for m in runs.values())))
    metrics: dict[str, Any] = {}
    for name in names:
        values = [m[name] for m in runs.values()]
        n, mean = len(values), math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        rng = max(values) - min(values)
        rule = rule_for(name)
        tol = None if rule is None or rule[1] is None else rule[1] + rule[2] * abs(mean)
        metrics[name] = {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values), "range": rng,
                         "values": values, "rule": None if rule is None else rule[0],
                         "gated": rule is not None and rule[1] is not None, "tolerance": tol,
                         "tol_over_range": None if tol is None or rng == 0 else tol / rng}
    partial = sorted(set.union(*(set(m) for m in runs.values())) - set(names))
    return {"runs": list(runs), "multiple": SPREAD_MULTIPLE, "rules": rule_spread(metrics), "metrics": metrics,
            "missing_in_some_runs": partial}


def rule_spread(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tolerance rule (or per metric without one): the widest spread among the metrics it covers.

    ``suggested_abs`` = SPREAD_MULTIPLE x the widest range and ``suggested_rel`` = SPREAD_MULTIPLE x the
    widest range / |mean|: how the tolerances in ``TOLERANCES`` are set (see reports/baseline/README.md).
    """
    groups: dict[str, list[str]] = {}
    for name, m in metrics.items():
        if m["rule"] is None or m["gated"]:
            groups.setdefault(m["rule"] or name, []).append(name)
    out = []
    for key, names in groups.items():
        rng = max(metrics[n]["range"] for n in names)
        rel = max(metrics[n]["range"] / abs(metrics[n]["mean"]) if metrics[n]["mean"] else 0.0 for n in names)
        rule = rule_for(names[0])
        out.append({"rule": rule[0] if rule else None, "metrics": len(names), "example": names[0],
                    "abs_tol": rule[1] if rule else None, "rel_tol": rule[2] if rule else None,
                    "max_range": rng, "max_rel_range": rel,
                    "suggested_abs": SPREAD_MULTIPLE * rng, "suggested_rel": SPREAD_MULTIPLE * rel})
    return out
