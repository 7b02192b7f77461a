"""`ddmbench separation`: a planning tool — how large must a run be to separate a policy from full?

Reads one finished run (typically larger than the profile being planned) and recomputes each paired
difference policy − full on the first N samples (ΔFID, ΔKID) and the first n traced seeds (Δamplification
per eps, Δconvergence error, ΔLipschitz), for a ladder of sizes. Samples and analyses are per seed, so the
first N rows of a large run are what a run with ``sample.n = N`` would produce.

Every size is a look at the same data, so the looks are corrected: Bonferroni over the L sizes of each
ladder, each interval at level 1 − alpha/L (alpha = ``report.alpha``). Intervals are basic bootstrap
(2θ̂ − the replicate quantiles), which carries the plug-in FID's small-sample bias into the interval instead
of centring on it. For each size it reports the interval and the fraction of bootstrap resamples that
separate (reflected replicates on the estimate's side of 0). It names a size only when that size and
every larger size on the ladder separate in the same direction.

Its output plans the NEXT run. A profile whose results are reported must not take its size from the size
that separated on those same results (DESIGN.md "Statistics"): write a cost or power rule in its header.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from rich.table import Table

from ddmbench.analysis.paired import align_by_seed
from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError
from ddmbench.evaluation.metrics import FrechetToReal, KernelToReal, bootstrap_indices
from ddmbench.io import ensure_writable, write_json
from ddmbench.pipeline.contrast import REFERENCE, load_quality, load_values, real_features
from ddmbench.pipeline.paths import Paths

PLANNING_NOTE = ("planning tool: sizes for a future run; never set the size of the run being reported from "
                 "the size that separated on it")
TAIL_REPLICATES = 10  # at least this many bootstrap replicates beyond each corrected quantile


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


def resamples_for(configured: int, alpha: float, looks: int) -> int:
    """Enough bootstrap replicates for quantiles at alpha/(2 looks): at least TAIL_REPLICATES in each tail."""
    return max(configured, math.ceil(TAIL_REPLICATES * 2 * looks / alpha))


def look(n: int, estimate: float, replicates: np.ndarray, level: float) -> dict[str, Any]:
    """One size: basic bootstrap interval at ``level`` from replicates (B,) of the difference, the fraction
    of reflected replicates (2θ̂ − θ*) on the estimate's side of 0, and lower/higher/not separable."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    q_lo, q_hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    lo, hi = 2 * estimate - q_hi, 2 * estimate - q_lo
    reflected = 2 * estimate - reps
    frac = float(np.mean(np.sign(reflected) == np.sign(estimate))) if estimate != 0 else 0.0
    verdict = "lower" if hi < 0 else "higher" if lo > 0 else "not separable"
    return {"n": n, "estimate": float(estimate), "interval": [float(lo), float(hi)], "frac_separating": frac,
            "verdict": verdict}


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


def study(estimates: list[float], replicates: list[np.ndarray], sizes: list[int], alpha: float) -> dict[str, Any]:
    """Bonferroni-corrected looks over one ladder: {"looks", "level", "rows", "named_size"}."""
    level = 1 - alpha / len(sizes)
    rows = [look(n, e, r, level) for n, e, r in zip(sizes, estimates, replicates)]
    return {"looks": len(sizes), "level": level, "rows": rows, "named_size": named_size(rows)}


def _quality_ladder(real: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sizes: list[int], resamples: int,
                    seed: int, batch: int = 25) -> dict[str, tuple[list[float], list[np.ndarray]]]:
    """ΔFID and ΔKID (unbiased) of row-aligned features a, b (N, d) on their first n rows, for each n:
    point estimates and paired bootstrap replicates (one set of rows scores both policies)."""
    frechet = FrechetToReal(real)
    out: dict[str, tuple[list[float], list[np.ndarray]]] = {"fid": ([], []), "kid": ([], [])}
    for n in sizes:
        a_n, b_n = a[:n].double(), b[:n].double()
        idx = bootstrap_indices(n, resamples, seed)                                          # (B, n)
        fid_reps = torch.cat([frechet(a_n[i]) - frechet(b_n[i]) for i in idx.split(batch)])
        out["fid"][0].append(float(frechet(a_n) - frechet(b_n)))
        out["fid"][1].append(fid_reps.numpy())
        ka, kb = KernelToReal(real, a_n), KernelToReal(real, b_n)
        counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))
        ones = torch.ones(1, n, dtype=torch.float64)
        out["kid"][0].append(float(ka(ones) - kb(ones)))
        out["kid"][1].append((ka(counts) - kb(counts)).numpy())
    return out


def _per_seed_ladder(d: np.ndarray, sizes: list[int], resamples: int,
                     seed: int) -> tuple[list[float], list[np.ndarray]]:
    """Mean paired difference d (n,) on its first n rows, and bootstrap replicates of that mean, per size."""
    rng = np.random.default_rng(seed)
    estimates, reps = [], []
    for n in sizes:
        estimates.append(float(d[:n].mean()))
        reps.append(d[:n][rng.integers(0, n, (resamples, n))].mean(1))
    return estimates, reps


def per_seed_differences(v: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-seed differences policy − full over their common seeds (seed order): amplification@<eps>,
    convergence_error, lipschitz, each (n,)."""
    ia, ib = align_by_seed(v["seeds"], ref["seeds"])
    out: dict[str, np.ndarray] = {}
    for row, eps in enumerate(v["eps"].tolist()):
        match = (ref["eps"] == eps).nonzero()
        if len(match):
            out[f"amplification@{eps:g}"] = (v["amplification"][row, ia] - ref["amplification"][int(match[0, 0]), ib]
                                            ).double().numpy()
    for key in ("error_at_nfe", "lipschitz"):
        out["convergence_error" if key == "error_at_nfe" else key] = (v[key][ia] - ref[key][ib]).double().numpy()
    return out


def run(cfg: Config, paths: Paths, policy: str, sizes: list[int] | None = None,
        seed_counts: list[int] | None = None) -> dict[str, Any]:
    """Looks at ``policy`` − full over ladders of N (samples) and n (traced seeds); writes
    reports/separation-<policy>.json and prints the tables."""
    if policy == REFERENCE:
        raise ArtifactError("--policy full contrasts full with itself; pick another policy, e.g. --policy top-2")
    out_path = paths.reports / f"separation-{policy}.json"
    ensure_writable(out_path)
    q, ref_q = load_quality(paths, policy), load_quality(paths, REFERENCE)
    v, ref_v = load_values(paths, policy), load_values(paths, REFERENCE)
    real = real_features(cfg, paths)
    ia, ib = align_by_seed(q["seeds"], ref_q["seeds"])
    diffs = per_seed_differences(v, ref_v)
    n_traced = min(len(x) for x in diffs.values())
    if len(ia) < 2 or n_traced < 2:
        raise ArtifactError(f"{policy} and full share fewer than 2 samples or traced seeds; re-run `dvc repro` so "
                            "that every policy samples and analyzes the same seeds")
    alpha = cfg.report.alpha
    n_sizes = ladder(len(ia), sizes, 125)
    s_sizes = ladder(n_traced, seed_counts, 16)
    b_q = resamples_for(cfg.evaluate.bootstrap, alpha, len(n_sizes))
    b_s = resamples_for(cfg.analysis.bootstrap, alpha, len(s_sizes))
    metrics: dict[str, Any] = {}
    for name, (est, reps) in _quality_ladder(real, q["features"][ia], ref_q["features"][ib], n_sizes, b_q,
                                             cfg.seed).items():
        metrics[name] = {"size": "samples N", "resamples": b_q, **study(est, reps, n_sizes, alpha)}
    for name, d in diffs.items():
        est, reps = _per_seed_ladder(d, s_sizes, b_s, cfg.seed)
        metrics[name] = {"size": "traced seeds n", "resamples": b_s, **study(est, reps, s_sizes, alpha)}
    result = {"policy": policy, "reference": REFERENCE, "delta": f"{policy} − {REFERENCE}", "note": PLANNING_NOTE,
              "alpha": alpha, "correction": "Bonferroni over the sizes of each ladder: each interval at level "
                                            "1 − alpha/looks (basic bootstrap)", "metrics": metrics}
    write_json(out_path, result)
    _print(result)
    console.print(f"wrote {out_path.relative_to(paths.root)}")
    return result


def _print(result: dict[str, Any]) -> None:
    p = result["policy"]
    for size in ("samples N", "traced seeds n"):
        names = [k for k, m in result["metrics"].items() if m["size"] == size]
        first = result["metrics"][names[0]]
        t = Table(title=f"{p} − full on the first {size} (interval at {first['level']:.4g} = 1 − α/{first['looks']} "
                        "looks; % of resamples that separate)")
        t.add_column(size, justify="right")
        for name in names:
            t.add_column(name, justify="right")
        for i, row in enumerate(first["rows"]):
            cells = [result["metrics"][k]["rows"][i] for k in names]
            t.add_row(str(row["n"]), *(f"{c['estimate']:+.3g} [{c['interval'][0]:+.3g}, {c['interval'][1]:+.3g}] "
                                       f"{c['frac_separating']:.0%}" for c in cells))
        console.print(t)
    console.print("separates at every larger size from: " + ", ".join(
        f"{k} {m['named_size'] if m['named_size'] else 'none of these'}" for k, m in result["metrics"].items()))
    console.print(f"[bold]{result['note']}[/]")
