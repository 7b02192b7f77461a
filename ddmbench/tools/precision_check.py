"""`ddmbench precision-check`: what sampling in bf16 does to quality and speed, before a profile adopts it.

For each policy, the run's trained models sample ``sample.n`` images from the same seeds twice, in float32
and under ``sample.precision: bf16-mixed``, timed side by side. Quality is compared paired by seed in the
run's evaluator space: ΔFID_inf and ΔKID (bf16 − fp32) with their jackknife 95% intervals, next to the
half-width of the fp32 set's own FID_inf / KID interval (its sampling noise at this N). The adoption rule:
bf16 may replace fp32 in a profile only where every paired interval lies inside ± that sampling half-width,
and only if it pays: all policies together sample faster. Writes ``--out`` (default runs/precision.json,
git-ignored); nothing under outputs/ or metrics/ changes.
"""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.config import Config
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space, to_uint8
from ddmbench.evaluation.features import extract_features, load_real_features
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.evaluation.intervals import RealSet, paired_quality, quality_intervals
from ddmbench.models.checkpoints import load_classifier
from ddmbench.models.precision import PRECISIONS
from ddmbench.pipeline.artifacts import oracle_clusters, sample_seeds, sampling_device
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import build_policy_field
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import generate


def half_width(interval: list[float] | tuple[float, float]) -> float:
    """Half the width of a (low, high) interval."""
    return (interval[1] - interval[0]) / 2


def within(interval: list[float] | tuple[float, float], half: float) -> bool:
    """The adoption rule's test: both ends of a paired difference's interval lie inside ± ``half``."""
    return max(abs(interval[0]), abs(interval[1])) <= half


@torch.no_grad()
def check_policy(cfg: Config, paths: Paths, spec: PolicySpec, real: RealSet, classifier: torch.nn.Module
                 ) -> dict[str, Any]:
    """One policy sampled at both precisions from the same seeds: paired quality, sampling half-widths, time."""
    seeds = sample_seeds(cfg)
    device = sampling_device(cfg)
    cluster = oracle_clusters(cfg, paths, spec, seeds)
    feats, seconds, images = {}, {}, {}
    for precision in PRECISIONS:
        at = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"precision": precision})})
        field = build_policy_field(at, paths, spec, device)
        result = generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, solver=cfg.sample.solver,
                          batch_size=cfg.sample.batch_size, cluster=cluster, device=device)
        images[precision] = to_uint8(result.images)
        feats[precision] = extract_features(classifier, to_model_space(images[precision]))
        seconds[precision] = result.seconds
    fp32 = quality_intervals(real, feats["32-true"])
    paired = paired_quality(real, feats["bf16-mixed"], feats["32-true"], labels=("bf16", "fp32"))
    sampling = {"fid": half_width(fp32["fid_inf_ci95"]), "kid": half_width(fp32["kid_ci95"])}
    inside = all(within(paired[m]["ci95"], sampling[m]) for m in ("fid", "kid"))
    return {
        "policy": spec.label, "n": len(seeds),
        "fid_inf_fp32": fp32["fid_inf"], "kid_fp32": fp32["kid_unbiased"],
        "delta": paired, "sampling_half_width": sampling, "inside_sampling_interval": inside,
        "pixels_differing": float((images["bf16-mixed"] != images["32-true"]).double().mean()),
        "seconds": seconds, "speedup": seconds["32-true"] / seconds["bf16-mixed"],
    }


def run(cfg: Config, paths: Paths, specs: list[PolicySpec]) -> dict[str, Any]:
    """Every policy in ``specs``; the verdict adopts bf16 only if every policy's paired intervals are inside."""
    ds = load_prepared(paths.dataset)
    classifier = load_classifier(paths.model("evaluator"), image_shape=shape_of_images(ds["test_x"]))
    real_feats, digest = load_real_features(paths.real_features, evaluator_sha256=weights_sha256(classifier),
                                            dataset=cfg.data.dataset)
    real = RealSet(real_feats, cfg.evaluate.groups)
    rows = [check_policy(cfg, paths, spec, real, classifier) for spec in specs]
    speedup = sum(r["seconds"]["32-true"] for r in rows) / sum(r["seconds"]["bf16-mixed"] for r in rows)
    inside = all(r["inside_sampling_interval"] for r in rows)
    return {"evaluator_sha256": digest, "rule": "adopt bf16-mixed only if every paired 95% interval of "
            "ΔFID_inf and ΔKID (bf16 − fp32) lies inside ± the fp32 set's own sampling half-width and all "
            "policies together sample faster", "quality_inside": inside, "speedup": speedup,
            "adopt": inside and speedup > 1, "rows": rows}
