"""`ddmbench separation`: how many samples and traced seeds separate a policy from full?

Reads one finished run (samples evaluated, analyses done, typically with a larger ``sample.n`` and
``analysis.n`` than the profile being planned) and recomputes the paired contrasts of `contrast` on the
first N samples and the first n traced seeds, for a ladder of N and n. Because samples and analyses are
per seed, the first N rows of a large run are exactly what a run with ``sample.n = N`` would produce, so
one large run answers "what is the smallest profile whose intervals exclude 0?" for every smaller size.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError
from ddmbench.io import ensure_writable, write_json
from ddmbench.pipeline.contrast import REFERENCE, load_quality, load_values, paired_scores, paired_values, real_set
from ddmbench.pipeline.paths import Paths
from ddmbench.report.document import fmt_ci


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


def run(cfg: Config, paths: Paths, policy: str, sizes: list[int] | None = None,
        seed_counts: list[int] | None = None) -> dict[str, Any]:
    """Paired contrasts of ``policy`` − full at each N (FID) and each n (per-seed analyses); writes
    reports/separation-<policy>.json and prints two tables."""
    if policy == REFERENCE:
        raise ArtifactError("--policy full contrasts full with itself; pick another policy, e.g. --policy top-2")
    out_path = paths.reports / f"separation-{policy}.json"
    ensure_writable(out_path)
    q, ref_q = load_quality(paths, policy), load_quality(paths, REFERENCE)
    v, ref_v = load_values(paths, policy), load_values(paths, REFERENCE)
    real, _ = real_set(cfg, paths, {policy: q, REFERENCE: ref_q})
    n_rows = min(len(q["seeds"]), len(ref_q["seeds"]))
    n_traced = min(len(v["seeds"]), len(ref_v["seeds"]))
    fid_rows = [{"n": n, **paired_scores(real, q, ref_q, label=policy, n_rows=n)["fid"]}
                for n in ladder(n_rows, sizes, 125)]
    seed_rows = [{"n": n, **paired_values(v, ref_v, label=policy, n_seeds=n)}
                 for n in ladder(n_traced, seed_counts, 16)]
    result = {"policy": policy, "reference": REFERENCE, "delta": f"{policy} − {REFERENCE}",
              "fid": fid_rows, "per_seed": seed_rows,
              "smallest_separating": {
                  "fid": next((r["n"] for r in fid_rows if r["verdict"] != "not separable"), None),
                  **{f"amplification.{k}": next((r["n"] for r in seed_rows
                                                 if r["amplification"][k]["verdict"] != "not separable"), None)
                     for k in seed_rows[0]["amplification"]},
                  "convergence_error": next((r["n"] for r in seed_rows
                                             if r["convergence_error"]["verdict"] != "not separable"), None)}}
    write_json(out_path, result)
    _print(result)
    console.print(f"wrote {out_path.relative_to(paths.root)}")
    return result


def _print(result: dict[str, Any]) -> None:
    p = result["policy"]
    t = Table(title=f"FID∞({p}) − FID∞(full) on the first N samples, paired (95% interval)")
    for h in ("N", "ΔFID∞ [95% CI]", "verdict"):
        t.add_column(h, justify="right")
    for r in result["fid"]:
        t.add_row(str(r["n"]), fmt_ci(r["estimate"], r["ci95"]), r["verdict"])
    console.print(t)
    eps_keys = list(result["per_seed"][0]["amplification"])
    t = Table(title=f"{p} − full per traced seed, on the first n seeds (mean [95% interval]; seeds where {p} is "
                    "lower, paired t p)")
    t.add_column("n", justify="right")
    for k in eps_keys:
        t.add_column(f"Δamp. ε={k.removeprefix('eps_')}", justify="right")
    t.add_column("Δconv. error", justify="right")
    for r in result["per_seed"]:
        cells = [_cell(r["amplification"][k], 3) for k in eps_keys]
        t.add_row(str(r["n"]), *cells, _cell(r["convergence_error"], 4))
    console.print(t)
    s = result["smallest_separating"]
    console.print("smallest size whose interval excludes 0: " + ", ".join(
        f"{k} {'n = ' + str(n) if n else 'none of these'}" for k, n in s.items()))


def _cell(d: dict[str, Any], digits: int) -> str:
    return f"{fmt_ci(d['estimate'], d['ci95'], digits)} ({d['frac_lower']:.0%}, p={d['p_value']:.2g})"
