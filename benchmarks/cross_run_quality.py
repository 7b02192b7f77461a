"""Two finished runs of one profile that differ in one setting (e.g. ``trainer.precision`` and
``sample.precision``: bf16 vs fp32), scored in ONE evaluator's feature space: per policy, the paired ΔFID_inf
and ΔKID (run B − run A) over the same sample seeds, with their grouped-jackknife 95% intervals, next to run
A's own sampling half-width; and each run's top-2 − full contrast.

    python benchmarks/cross_run_quality.py --a runs/speed/head-jobs2/repo --b runs/speed/head-jobs2-bf16/repo \\
        --save reports/bf16-training-quality.json

Both runs' samples are read from ``outputs/samples/<policy>.pt`` and scored by run A's evaluator against run A's
real-set features (another precision trains another evaluator too, so each run's own FIDs are in different
feature spaces). The runs' models differ (B trained otherwise), so the paired interval covers the sampling
noise of both sets given these two trained DDMs, not the spread between trainings: a training seed moves
these FIDs too (the default profile's R = 3: full 17.4 / 17.0 / 15.1). Read it as "how far apart", not
"equal within noise"; only several seeds per setting can say whether a setting changes quality.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from ddmbench.data.datasets import to_model_space
from ddmbench.evaluation.features import extract_features, load_real_features
from ddmbench.evaluation.identity import weights_sha256
from ddmbench.evaluation.intervals import RealSet, paired_quality, quality_intervals
from ddmbench.io import load_tensors
from ddmbench.models.checkpoints import load_classifier
from ddmbench.tools.precision_check import half_width


def features_of(run: Path, policy: str, classifier: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(seeds (N,), evaluator features (N, D)) of one run's samples of ``policy``."""
    samples = load_tensors(run / "outputs" / "samples" / f"{policy}.pt", f"ddmbench sample --policy {policy} in {run}")
    return samples["seeds"], extract_features(classifier, to_model_space(samples["images"]))


def compare(a: Path, b: Path, policies: list[str], groups: int) -> dict[str, Any]:
    classifier = load_classifier(a / "outputs" / "evaluator.pt")
    real_feats, digest = load_real_features(a / "outputs" / "features" / "real-test.pt",
                                            evaluator_sha256=weights_sha256(classifier))
    real = RealSet(real_feats, groups)
    rows, feats = [], {}
    for policy in policies:
        (seeds_a, fa), (seeds_b, fb) = features_of(a, policy, classifier), features_of(b, policy, classifier)
        if not torch.equal(seeds_a, seeds_b):
            raise SystemExit(f"{policy}: the two runs sampled other seeds; pair only runs of one profile and seed")
        feats[policy] = (fa, fb)
        own = quality_intervals(real, fa)
        rows.append({"policy": policy, "fid_inf_a": own["fid_inf"], "kid_a": own["kid_unbiased"],
                     "sampling_half_width_a": {"fid": half_width(own["fid_inf_ci95"]), "kid": half_width(own["kid_ci95"])},
                     "delta_b_minus_a": paired_quality(real, fb, fa, labels=("b", "a"))})
    contrasts = {}
    if {"top-2", "full"} <= set(feats):
        contrasts = {run: paired_quality(real, feats["top-2"][i], feats["full"][i], labels=("top-2", "full"))
                     for i, run in enumerate(("a", "b"))}
    return {"a": str(a), "b": str(b), "evaluator_sha256": digest, "rows": rows, "top2_minus_full": contrasts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, required=True, help="reference run (its evaluator scores both)")
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--policy", action="append", help="default: every policy of run A's params.yaml")
    p.add_argument("--save", type=Path)
    args = p.parse_args(argv)
    params = yaml.safe_load((args.a / "params.yaml").read_text())
    result = compare(args.a, args.b, args.policy or params["policies"], params["evaluate"]["groups"])
    print("| policy | FID∞ A | ΔFID∞ B − A [95%] | ± A | ΔKID B − A [95%] | ± A |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        d, h = r["delta_b_minus_a"], r["sampling_half_width_a"]
        print(f"| {r['policy']} | {r['fid_inf_a']:.2f} | {d['fid']['estimate']:+.2f} [{d['fid']['ci95'][0]:+.2f}, "
              f"{d['fid']['ci95'][1]:+.2f}] | {h['fid']:.2f} | {d['kid']['estimate']:+.3f} [{d['kid']['ci95'][0]:+.3f}, "
              f"{d['kid']['ci95'][1]:+.3f}] | {h['kid']:.3f} |")
    for run, c in result["top2_minus_full"].items():
        print(f"top-2 − full in run {run}: ΔKID {c['kid']['estimate']:+.3f} [{c['kid']['ci95'][0]:+.3f}, "
              f"{c['kid']['ci95'][1]:+.3f}] ({c['kid']['verdict']}), ΔFID∞ {c['fid']['estimate']:+.2f}")
    if args.save:
        args.save.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
