"""`ddmbench separation`: a planning tool — how large must a run be to separate a policy from full?

Reads one finished run (typically larger than the profile being planned) and recomputes the contrast
stage's paired differences policy − full on the first N samples (ΔFID, and ΔKID where `contrast` gives it)
and the first n traced seeds (Δamplification per eps, Δconvergence error, ΔLipschitz) for a ladder of
sizes. Samples and analyses are per seed, so the first N rows of a large run are what a run with
``sample.n = N`` would produce. The differences, intervals and p-values are the contrast stage's own
(one implementation); this tool only decides what a look at each size says.

Every size is a look at the same data, so the looks are corrected: Bonferroni over the L sizes of each
ladder, a size separates when its two-sided p-value is below alpha/L (alpha = ``report.alpha``). For each
size it reports the estimate with its 95% interval, the p-value, and the fraction of bootstrap resamples
(n rows drawn with replacement from those n, scored again by the contrast stage's functions) that
separate in the same direction: how often a fresh run of that size would. It names a size only when that
size and every larger size on the ladder separate in the same direction.

Its output plans the NEXT run. A profile whose results are reported must not take its size from the size
that separated on those same results (docs/statistics.md): write a cost or power rule in its header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.table import Table

from ddmbench.analysis.paired import align_by_seed
from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError
from ddmbench.evaluation.intervals import RealSet
from ddmbench.io import ensure_writable, write_json
from ddmbench.pipeline.contrast import REFERENCE, load_quality, load_values, paired_scores, paired_values, real_set
from ddmbench.pipeline.paths import Paths

PLANNING_NOTE = ("planning tool: sizes for a future run; never set the size of the run being reported from "
                 "the size that separated on it")
# rows (n,) of the aligned pair -> {metric: paired difference with estimate, ci95, estimand, p_value}
Differences = Callable[[torch.Tensor], dict[str, dict[str, Any]]]


def ladder(available: int, sizes: list[int] | None, smallest: int) -> list[int]:
    """The requested sizes (each checked against what the run holds), or halvings of ``available`` down to
    ``smallest``, ascending."""
    if sizes:
        too_big = [s for s in sizes if s > available or s < 2]
        if too_big:
            raise ArtifactError(f"size(s) {too_big} outside 2..{available}, what this run holds; pass smaller "
                                "sizes or re-run sample/analyze with a larger sample.n / analysis.n")
        return sorted(set(sizes))
    out, n = [], available
    while n >= smallest:
        out.append(n)
        n //= 2
    return sorted(out) or [available]


def _direction(d: dict[str, Any], per_look: float) -> str:
    if d["p_value"] < per_look and d["estimate"] != 0:
        return "lower" if d["estimate"] < 0 else "higher"
    return "not separable"


def named_size(rows: list[dict[str, Any]]) -> int | None:
    """The smallest size from which every larger size on the ladder separates in the same direction
    (rows ascending in n); None when the largest size does not separate."""
    if not rows or rows[-1]["verdict"] == "not separable":
        return None
    direction, named = rows[-1]["verdict"], rows[-1]["n"]
    for row in reversed(rows[:-1]):
        if row["verdict"] != direction:
            break
        named = row["n"]
    return named


def study(differences: Differences, sizes: list[int], alpha: float, resamples: int,
          seed: int) -> dict[str, dict[str, Any]]:
    """Bonferroni-corrected looks at each size (ascending) of one ladder, per metric: {"looks", "alpha_per_look",
    "rows": [{n, estimate, ci95, estimand, p_value, verdict, frac_separating}], "named_size"}."""
    per_look = alpha / len(sizes)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for n in sizes:
        point = differences(torch.arange(n))
        for metric, d in point.items():
            missing = [k for k in ("estimate", "ci95", "p_value") if d.get(k) is None]
            if missing:
                raise ArtifactError(f"the contrast stage's {metric} difference has no {', '.join(missing)}; "
                                    "separation corrects looks on p-values and never invents one")
        hits = dict.fromkeys(point, 0)
        for _ in range(resamples):
            again = differences(torch.from_numpy(rng.integers(0, n, n)))
            for metric, d in point.items():
                hits[metric] += _direction(again[metric], per_look) == _direction(d, per_look) != "not separable"
        for metric, d in point.items():
            row = {"n": n, "estimate": float(d["estimate"]), "ci95": [float(x) for x in d["ci95"]],
                   "estimand": d.get("estimand"), "p_value": float(d["p_value"]), "verdict": _direction(d, per_look),
                   "frac_separating": hits[metric] / resamples if resamples else None}
            out.setdefault(metric, {"looks": len(sizes), "alpha_per_look": per_look, "rows": []})["rows"].append(row)
    for m in out.values():
        m["named_size"] = named_size(m["rows"])
    return out


def _renumbered(rows: dict[str, torch.Tensor], idx: torch.Tensor, keys: tuple[str, ...],
                column: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of per-seed tensors (first dimension; last for ``column`` keys) under fresh seeds 0..n-1,
    so a bootstrap resample with repeated seeds still pairs row i with row i."""
    out = {k: rows[k][idx] for k in keys}
    out.update({k: rows[k][..., idx] for k in column})
    return {**rows, **out, "seeds": torch.arange(len(idx))}


# The two adapters below are the only place that knows the contrast stage's function signatures.
def quality_differences(cfg: Config, real: RealSet, q: dict[str, torch.Tensor],
                        ref: dict[str, torch.Tensor]) -> Differences:
    """Set-level differences (ΔFID∞, ΔKID) of row-aligned quality files, as `contrast` computes them."""
    def at(idx: torch.Tensor) -> dict[str, dict[str, Any]]:
        a, b = _renumbered(q, idx, ("features",)), _renumbered(ref, idx, ("features",))
        return paired_scores(real, a, b)
    return at


def seed_differences(cfg: Config, v: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> Differences:
    """Per-seed differences (Δamplification@eps, Δconvergence error, ΔLipschitz), as `contrast` computes them."""
    keys, column = ("error_at_nfe", "lipschitz"), ("amplification",)

    def at(idx: torch.Tensor) -> dict[str, dict[str, Any]]:
        d = paired_values(_renumbered(v, idx, keys, column), _renumbered(ref, idx, keys, column))
        return {**{f"amplification@{k.removeprefix('eps_')}": x for k, x in d["amplification"].items()},
                "convergence_error": d["convergence_error"], "lipschitz": d["lipschitz"]}
    return at


def run(cfg: Config, paths: Paths, policy: str, sizes: list[int] | None = None,
        seed_counts: list[int] | None = None, resamples: int = 100) -> dict[str, Any]:
    """Looks at ``policy`` − full over ladders of N (samples) and n (traced seeds); writes
    reports/separation-<policy>.json and prints the tables."""
    if policy == REFERENCE:
        raise ArtifactError("--policy full contrasts full with itself; pick another policy, e.g. --policy top-2")
    out_path = paths.reports / f"separation-{policy}.json"
    ensure_writable(out_path)
    q, ref_q = load_quality(paths, policy), load_quality(paths, REFERENCE)
    v, ref_v = load_values(paths, policy), load_values(paths, REFERENCE)
    real, _ = real_set(cfg, paths, {policy: q, REFERENCE: ref_q})
    qa, qb = align_by_seed(q["seeds"], ref_q["seeds"])
    va, vb = align_by_seed(v["seeds"], ref_v["seeds"])
    if len(qa) < 2 or len(va) < 2:
        raise ArtifactError(f"{policy} and full share fewer than 2 samples or traced seeds; re-run `dvc repro` so "
                            "that every policy samples and analyzes the same seeds")
    q_rows = {k: q[k][qa] for k in ("seeds", "features")}
    ref_rows = {k: ref_q[k][qb] for k in ("seeds", "features")}
    v_rows = {**v, "seeds": v["seeds"][va], "amplification": v["amplification"][:, va],
              "error_at_nfe": v["error_at_nfe"][va], "lipschitz": v["lipschitz"][va]}
    ref_v_rows = {**ref_v, "seeds": ref_v["seeds"][vb], "amplification": ref_v["amplification"][:, vb],
                  "error_at_nfe": ref_v["error_at_nfe"][vb], "lipschitz": ref_v["lipschitz"][vb]}
    alpha = cfg.report.alpha
    n_sizes, s_sizes = ladder(len(qa), sizes, 125), ladder(len(va), seed_counts, 16)
    metrics = {**{k: {"size": "samples N", **m} for k, m in study(
                   quality_differences(cfg, real, q_rows, ref_rows), n_sizes, alpha, resamples, cfg.seed).items()},
               **{k: {"size": "traced seeds n", **m} for k, m in study(
                   seed_differences(cfg, v_rows, ref_v_rows), s_sizes, alpha, resamples, cfg.seed).items()}}
    result = {"policy": policy, "reference": REFERENCE, "delta": f"{policy} − {REFERENCE}", "note": PLANNING_NOTE,
              "alpha": alpha, "resamples": resamples,
              "correction": "Bonferroni over the sizes of each ladder: a size separates when p < alpha/looks",
              "metrics": metrics}
    write_json(out_path, result)
    _print(result)
    console.print(f"wrote {out_path.relative_to(paths.root)}")
    return result


def _print(result: dict[str, Any]) -> None:
    p = result["policy"]
    for size in ("samples N", "traced seeds n"):
        names = [k for k, m in result["metrics"].items() if m["size"] == size]
        if not names:
            continue
        first = result["metrics"][names[0]]
        t = Table(title=f"{p} − full on the first {size}: estimate [95% CI], p (separates when p < "
                        f"{first['alpha_per_look']:.3g} = α/{first['looks']} looks), % of resamples that separate")
        t.add_column(size, justify="right")
        for name in names:
            t.add_column(name, justify="right")
        for i, row in enumerate(first["rows"]):
            cells = [result["metrics"][k]["rows"][i] for k in names]
            t.add_row(str(row["n"]), *(f"{c['estimate']:+.3g} [{c['ci95'][0]:+.3g}, {c['ci95'][1]:+.3g}] "
                                       f"p={c['p_value']:.2g} {c['frac_separating']:.0%}" for c in cells))
        console.print(t)
    console.print("separates at every larger size from: " + ", ".join(
        f"{k} {m['named_size'] if m['named_size'] else 'none of these'}" for k, m in result["metrics"].items()))
    console.print(f"[bold]{result['note']}[/]")
