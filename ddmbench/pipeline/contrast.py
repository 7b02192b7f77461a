"""Stage `contrast`: every policy against the full ensemble, paired by seed.

For each policy p and the reference ``full``: FID(p) − FID(full) with a paired bootstrap interval over the
generated rows (evaluator features saved by `evaluate`), and mean per-seed differences of amplification
(every eps), convergence error and Lipschitz estimate (per-seed values saved by `analyze`) with bootstrap
intervals, the fraction of seeds where p is lower and a Wilcoxon signed-rank p-value. Writes
metrics/contrast.json; a difference whose interval excludes 0 is 'lower' or 'higher', else 'not separable'.
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.analysis.paired import align_by_seed, paired_fid_delta, paired_mean_delta
from ddmbench.config import Config, config_to_dict
from ddmbench.console import console, show_table
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space
from ddmbench.errors import ArtifactError
from ddmbench.evaluation.metrics import extract_features
from ddmbench.io import ensure_writable, load_tensors, write_json
from ddmbench.models.checkpoints import load_classifier
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.report import tables

REFERENCE = "full"


def load_quality(paths: Paths, label: str) -> dict[str, torch.Tensor]:
    """outputs/quality/<label>.pt: seeds (N,), evaluator features (N, d), per-sample confidence and distance."""
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


def paired_values(v: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], *, resamples: int, seed: int,
                  n_seeds: int | None = None) -> dict[str, Any]:
    """Per-seed analyses of a policy minus those of the reference, over their first ``n_seeds`` common seeds."""
    ia, ib = align_by_seed(v["seeds"], ref["seeds"])
    ia, ib = ia[:n_seeds], ib[:n_seeds]
    if len(ia) < 2:
        raise ArtifactError("the analyses of a policy and of full share fewer than 2 seeds; re-run "
                            "`dvc repro` so that every analyze stage uses the same analysis.n")
    kw: dict[str, Any] = {"resamples": resamples, "seed": seed}
    out: dict[str, Any] = {"amplification": {}}
    for row, eps in enumerate(v["eps"].tolist()):
        match = (ref["eps"] == eps).nonzero()
        if len(match):
            out["amplification"][f"eps_{eps:g}"] = paired_mean_delta(
                v["amplification"][row, ia].numpy(), ref["amplification"][int(match[0, 0]), ib].numpy(), **kw)
    out["convergence_error"] = paired_mean_delta(v["error_at_nfe"][ia].numpy(), ref["error_at_nfe"][ib].numpy(), **kw)
    out["lipschitz"] = paired_mean_delta(v["lipschitz"][ia].numpy(), ref["lipschitz"][ib].numpy(), **kw)
    return out


def paired_fid(real: torch.Tensor, q: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], *, resamples: int,
               seed: int, n_rows: int | None = None) -> dict[str, Any]:
    """FID of a policy's samples minus the reference's, over their first ``n_rows`` common seeds."""
    ia, ib = align_by_seed(q["seeds"], ref["seeds"])
    ia, ib = ia[:n_rows], ib[:n_rows]
    if len(ia) < 2:
        raise ArtifactError("the samples of a policy and of full share fewer than 2 seeds; re-run `dvc repro` "
                            "so that every policy samples the same seeds")
    return paired_fid_delta(real, q["features"][ia], ref["features"][ib], resamples=resamples, seed=seed)


def real_features(cfg: Config, paths: Paths) -> torch.Tensor:
    """(n_real, d) evaluator features of the test split, as `evaluate` computes them."""
    ds = load_prepared(paths.dataset)
    return extract_features(load_classifier(paths.model("evaluator"), image_shape=shape_of_images(ds["test_x"])),
                            to_model_space(ds["test_x"][:cfg.evaluate.n_real]))


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
    real = real_features(cfg, paths)
    metrics["reference"] = REFERENCE
    for label in cfg.policies:
        if label == REFERENCE:
            continue
        metrics["contrasts"][label] = {
            "fid": paired_fid(real, quality[label], quality[REFERENCE], resamples=cfg.evaluate.bootstrap,
                              seed=cfg.seed),
            **paired_values(values[label], values[REFERENCE], resamples=cfg.analysis.bootstrap, seed=cfg.seed),
        }
    write_json(paths.contrast_metrics, metrics)
    mirror(cfg, paths, "contrast", "contrast", {"evaluate.bootstrap": cfg.evaluate.bootstrap,
           "analysis.bootstrap": cfg.analysis.bootstrap, "policies": config_to_dict(cfg)["policies"]},
           metrics, [paths.contrast_metrics])
    return metrics


def print_table(metrics: dict[str, Any]) -> None:
    """The contrasts as a rich table (the middle eps of the amplification, as in the report)."""
    if not metrics["contrasts"]:
        return
    keys = list(next(iter(metrics["contrasts"].values()))["amplification"])
    show_table("policy − full, paired by seed (95% intervals)",
                *tables.contrasts(metrics, keys[len(keys) // 2] if keys else ""))
