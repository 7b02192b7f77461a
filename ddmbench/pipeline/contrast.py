"""Stage `contrast`: every policy against the full ensemble, paired by seed.

Writes metrics/contrast.json:

    {"reference": "full", "delta": "policy − full", "evaluator_sha256": "<hex>",
     "contrasts": {<policy>: {
         "fid": D, "kid": D,                                 # set statistics, grouped jackknife (evaluation/intervals.py)
         "amplification": {"eps_<e>": D, ...},               # per-seed analyses, paired over the traced seeds
         "convergence_error": D, "lipschitz": D}}}

Every difference D holds ``estimate``, ``ci95`` (95% interval), ``estimand`` (what the interval covers),
``p_value`` (two-sided) with ``p_value_method``, ``verdict`` ('lower' / 'higher' when the interval excludes
0, else 'not separable') and ``n`` (rows or seeds paired). ΔFID is FID_inf(policy) − FID_inf(full) and ΔKID the
difference of the unbiased KIDs, both with jackknife t intervals and t-test p-values over groups of seeds
(``plug_in_delta`` is the difference of the plug-in values at N); per-seed differences carry a paired t interval
of the mean and a paired t-test p-value, plus ``wilcoxon_p`` (signed-rank check), ``frac_lower`` and
``median_delta``, which count a per-seed difference within float drift as a tie. Every difference carries
``tie_tolerance``, the float drift allowance of the compared values. The record is
:mod:`ddmbench.evaluation.contrast_record`, which the regression gate reads. Nothing here draws random
numbers. All intervals cover sampling noise given one set of trained models. Quality files measured with
another evaluator than the real features (SHA-256 of its weights) are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.analysis.paired import align_by_seed, paired_mean_delta
from ddmbench.config import Config, config_to_dict
from ddmbench.console import console, show_table
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.evaluation import contrast_record
from ddmbench.evaluation.features import load_real_features
from ddmbench.evaluation.identity import check_same_evaluator
from ddmbench.evaluation.intervals import RealSet, paired_quality
from ddmbench.io import ensure_writable, load_tensors, write_json
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.report import tables

REFERENCE = "full"


def load_quality(paths: Paths, label: str) -> dict[str, Any]:
    """outputs/quality/<label>.pt: seeds (N,), evaluator features (N, d), per-sample confidence and distance,
    and the evaluator digest."""
    what = f"ddmbench evaluate --policy {label}"
    q = load_tensors(paths.quality(label), what)
    if "features" not in q or "seeds" not in q or len(q["features"]) != len(q["seeds"]):
        raise ArtifactError(f"{paths.quality(label)} holds no per-sample features and seeds; re-run `{what}`")
    return q


def load_values(paths: Paths, label: str) -> dict[str, torch.Tensor]:
    """outputs/analysis/<label>.pt: seeds (n,), eps (E,), amplification (E, n), error_at_nfe (n,), lipschitz (n,)."""
    what = f"ddmbench analyze --policy {label}"
    v = load_tensors(paths.analysis_values(label), what)
    if any(k not in v for k in ("seeds", "eps", "amplification", "error_at_nfe", "lipschitz")):
        raise ArtifactError(f"{paths.analysis_values(label)} lacks per-seed values; re-run `{what}`")
    return v


def real_set(cfg: Config, paths: Paths, quality: dict[str, dict[str, Any]]) -> tuple[RealSet, str]:
    """The real features prepared for the jackknife, after checking that they and every quality file were
    measured with one evaluator (ArtifactError naming both digests otherwise)."""
    real, digest = load_real_features(paths.real_features, dataset=cfg.data.dataset)
    if len(real) < cfg.evaluate.groups:
        raise ConfigError(f"params.yaml: evaluate.groups={cfg.evaluate.groups} exceeds the {len(real)} real test "
                          "images; use fewer jackknife groups")
    digest = check_same_evaluator({str(paths.real_features.relative_to(paths.root)): digest, **{
        str(paths.quality(label).relative_to(paths.root)): q.get("evaluator_sha256") for label, q in quality.items()}})
    return RealSet(real, cfg.evaluate.groups), digest


def paired_values(v: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], *, label: str = "policy",
                  n_seeds: int | None = None) -> dict[str, Any]:
    """Per-seed analyses of a policy minus those of the reference, over their first ``n_seeds`` common seeds."""
    ia, ib = align_by_seed(v["seeds"], ref["seeds"])
    ia, ib = ia[:n_seeds], ib[:n_seeds]
    if len(ia) < 2:
        raise ArtifactError("the analyses of a policy and of full share fewer than 2 seeds; re-run "
                            "`dvc repro` so that every analyze stage uses the same analysis.n")
    given = "over the traced seeds, given these trained models"
    out: dict[str, Any] = {"amplification": {}}
    for row, eps in enumerate(v["eps"].tolist()):
        match = (ref["eps"] == eps).nonzero()
        if len(match):
            out["amplification"][f"eps_{eps:g}"] = paired_mean_delta(
                v["amplification"][row, ia].numpy(), ref["amplification"][int(match[0, 0]), ib].numpy(),
                estimand=f"mean amplification at eps = {eps:g}, {label} − {REFERENCE}, {given}")
    out["convergence_error"] = paired_mean_delta(
        v["error_at_nfe"][ia].numpy(), ref["error_at_nfe"][ib].numpy(),
        estimand=f"mean convergence error at sample.nfe_steps, {label} − {REFERENCE}, {given}")
    out["lipschitz"] = paired_mean_delta(
        v["lipschitz"][ia].numpy(), ref["lipschitz"][ib].numpy(),
        estimand=f"mean local Lipschitz estimate, {label} − {REFERENCE}, {given}")
    return out


def paired_scores(real: RealSet, q: dict[str, Any], ref: dict[str, Any], *, label: str = "policy",
                  n_rows: int | None = None) -> dict[str, dict[str, Any]]:
    """ΔFID_inf and ΔKID of a policy's samples minus the reference's, over their first ``n_rows`` common seeds."""
    ia, ib = align_by_seed(q["seeds"], ref["seeds"])
    ia, ib = ia[:n_rows], ib[:n_rows]
    if len(ia) < real.groups:
        raise ArtifactError(f"the samples of {label} and of full share {len(ia)} seeds, fewer than evaluate.groups="
                            f"{real.groups}; re-run `dvc repro` so that every policy samples the same seeds")
    return paired_quality(real, q["features"][ia], ref["features"][ib], labels=(label, REFERENCE))


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.contrast_metrics)
    metrics: dict[str, Any] = {"reference": None, "delta": "policy − full", "contrasts": {}}
    if REFERENCE not in cfg.policies:
        metrics["note"] = "no `full` policy in `policies`: nothing to contrast with"
        write_json(paths.contrast_metrics, metrics)
        console.print(f"[yellow]{metrics['note']}[/]")
        return metrics
    # read every input before computing anything, so a missing one fails fast with its own message
    quality = {label: load_quality(paths, label) for label in cfg.policies}
    values = {label: load_values(paths, label) for label in cfg.policies}
    real, digest = real_set(cfg, paths, quality)
    metrics.update(reference=REFERENCE, evaluator_sha256=digest)
    for label in cfg.policies:
        if label == REFERENCE:
            continue
        metrics["contrasts"][label] = {
            **paired_scores(real, quality[label], quality[REFERENCE], label=label),
            **paired_values(values[label], values[REFERENCE], label=label),
        }
    contrast_record.validate(metrics, paths.contrast_metrics)   # the record the regression gate reads
    write_json(paths.contrast_metrics, metrics)
    mirror(cfg, paths, "contrast", "contrast", {"evaluate.groups": cfg.evaluate.groups,
           "policies": config_to_dict(cfg)["policies"]},
           metrics, [paths.contrast_metrics], tags={"evaluator_sha256": digest})
    return metrics


def print_table(metrics: dict[str, Any]) -> None:
    """The contrasts as a rich table (the middle eps of the amplification, as in the report)."""
    if not metrics["contrasts"]:
        return
    keys = list(next(iter(metrics["contrasts"].values()))["amplification"])
    show_table("policy − full, paired by seed (95% intervals)",
                *tables.contrasts(metrics, keys[len(keys) // 2] if keys else ""))
