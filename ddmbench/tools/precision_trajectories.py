"""`ddmbench precision-check --trajectories`: what bf16 does to the trajectory analyses' per-seed numbers.

Why the ``analyze`` stage traces in float32 whatever ``sample.precision`` says: its finite-difference measures
divide the difference of two trajectories (amplification at eps) or two field evaluations (the routing jump at
delta) by a small step, so bf16 rounding (8 mantissa bits) can dominate them. For each policy, on the first
``analysis.n`` seeds and once per precision: the traced pass with the routing-jump probe, the amplification
at every eps and the convergence error at the configured NFE (the same calls as the analyze stage). The
Lipschitz power iteration is not compared: the finite-difference measures already keep the stage in float32
(its forward-mode form did not run under CPU autocast at all; the reverse-over-reverse form that replaced it
does, and is left unchecked here). Each per-seed quantity gets the
paired difference bf16 − fp32 (mean over seeds, paired t 95% interval, ddmbench.analysis.paired) next to the
half-width of the fp32 mean's own t interval over seeds (its sampling noise at this n). The rule is the
sampling check's: inside when both ends of the paired interval lie within ± that half-width. For each
declared primary whose two policies are both checked, the contrast (policy − versus, paired over seeds) is
given at both precisions with its verdict.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ddmbench.analysis.convergence import convergence
from ddmbench.analysis.paired import paired_mean_delta
from ddmbench.analysis.stability import RoutingJump, amplification
from ddmbench.analysis.stats import t_interval
from ddmbench.config import Config
from ddmbench.models.precision import PRECISIONS
from ddmbench.pipeline.artifacts import oracle_clusters, sample_seeds, sampling_device
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import build_policy_field
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import generate
from ddmbench.tools.precision_check import half_width, within


def per_seed_analyses(cfg: Config, paths: Paths, spec: PolicySpec, precision: str) -> tuple[dict[str, np.ndarray], float]:
    """{quantity: (n,) per-seed values} of one policy's analyses with the field at ``precision``, and the
    seconds they took. Quantities: ``amplification@<eps>``, ``routing_jump`` (mean over the evaluations),
    ``convergence_error`` (RMS per pixel at the configured NFE)."""
    a, s = cfg.analysis, cfg.sample
    at = cfg.model_copy(update={"sample": s.model_copy(update={"precision": precision})})
    seeds = sample_seeds(cfg)[:a.n]
    device = sampling_device(cfg)
    field = build_policy_field(at, paths, spec, device)
    kw: dict[str, Any] = {"solver": s.solver, "batch_size": s.batch_size, "device": device,
                          "cluster": oracle_clusters(cfg, paths, spec, seeds)}
    start = time.perf_counter()
    jump = RoutingJump(field, a.jump_delta)
    base = generate(field, seeds, nfe_steps=s.nfe_steps, observers=[jump], **kw).images
    amp = amplification(field, seeds, a.eps, nfe_steps=s.nfe_steps, base=base, **kw)
    conv = convergence(field, seeds, nfe_steps=s.nfe_steps, reference_factor=a.reference_factor,
                       rungs=a.ladder_rungs, at_nfe=base, **kw)
    seconds = time.perf_counter() - start
    values = {f"amplification@{e:g}": r for e, r in amp.items()}
    values.update(routing_jump=jump.result()[1].mean(1), convergence_error=conv["error_at_nfe"])
    return {k: v.double().numpy() for k, v in values.items()}, seconds


def compare_policy(cfg: Config, paths: Paths, spec: PolicySpec) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """One policy's paired bf16 − fp32 differences per quantity, the fp32 half-widths, the verdict and the
    seconds; also the raw per-seed values by precision (for the contrasts)."""
    values, seconds = {}, {}
    for precision in PRECISIONS:
        values[precision], seconds[precision] = per_seed_analyses(cfg, paths, spec, precision)
    fp32, bf16 = values["32-true"], values["bf16-mixed"]
    rows = {}
    for q in fp32:
        delta = paired_mean_delta(bf16[q], fp32[q], estimand=f"mean over seeds of {q}, bf16 − fp32")
        half = half_width(t_interval(fp32[q]))
        rows[q] = {"fp32_mean": float(fp32[q].mean()), "delta": delta, "fp32_half_width": half,
                   "inside": within(delta["ci95"], half)}
    return {"policy": spec.label, "n": len(next(iter(fp32.values()))), "quantities": rows,
            "inside": all(r["inside"] for r in rows.values()), "seconds": seconds,
            "speedup": seconds["32-true"] / seconds["bf16-mixed"]}, values


def primary_contrasts(cfg: Config, values: dict[str, dict[str, dict[str, np.ndarray]]]) -> list[dict[str, Any]]:
    """report.primary's per-seed quantities (amplification@eps) whose two policies were both checked: the
    paired contrast policy − versus at each precision, and whether its verdict is the same at both."""
    out = []
    for primary in cfg.report.primary:
        if primary.policy not in values or primary.versus not in values:
            continue
        for metric in primary.metrics:
            if metric not in values[primary.policy]["32-true"]:
                continue                                    # kid/fid: set statistics, in the sampling check
            at = {p: paired_mean_delta(values[primary.policy][p][metric], values[primary.versus][p][metric],
                                       estimand=f"mean over seeds of {metric}, {primary.policy} − {primary.versus}")
                  for p in PRECISIONS}
            out.append({"policy": primary.policy, "versus": primary.versus, "metric": metric, "by_precision": at,
                        "same_verdict": at["32-true"]["verdict"] == at["bf16-mixed"]["verdict"]})
    return out


def run(cfg: Config, paths: Paths, specs: list[PolicySpec]) -> dict[str, Any]:
    """Every policy in ``specs``: per-quantity rows, the declared primaries' contrasts at both precisions, and
    the verdict (bf16 may run the analyses only if every paired interval is inside)."""
    rows, values = [], {}
    for spec in specs:
        row, values[spec.label] = compare_policy(cfg, paths, spec)
        rows.append(row)
    return {"rule": "the analyses may run in bf16-mixed only if every paired 95% interval (bf16 − fp32, per-seed "
            "quantities) lies inside ± the fp32 mean's own t half-width over the same seeds",
            "not_compared": {"lipschitz": "not checked here; the analyze stage traces in float32 whatever "
                             "sample.precision says"},
            "inside": all(r["inside"] for r in rows), "rows": rows, "primary_contrasts": primary_contrasts(cfg, values),
            "speedup": sum(r["seconds"]["32-true"] for r in rows) / sum(r["seconds"]["bf16-mixed"] for r in rows)}
