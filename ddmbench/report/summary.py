"""The report's generated summary: does this run show the dissociation (sparse routing better in quality,
the full ensemble more stable)? Every sentence is derived from the numbers; nothing is hard-coded."""

from __future__ import annotations

from typing import Any

from ddmbench.report.tables import Results, eps_value, headline_eps


def _interval(m: dict[str, Any], key: str, ci_key: str) -> tuple[float, float, float]:
    point = float(m[key])
    lo, hi = m.get(ci_key) or (point, point)
    return point, float(lo), float(hi)


def compare(a: tuple[float, float, float], b: tuple[float, float, float]) -> str:
    """'lower' / 'higher' when the 95% intervals do not overlap, else 'overlapping'."""
    if a[2] < b[1]:
        return "lower"
    if a[1] > b[2]:
        return "higher"
    return "overlapping"


def sparse_reference(results: Results) -> str | None:
    """The sparse policy compared with full: top-2 if present, else the top-k with the lowest FID."""
    if "top-2" in results:
        return "top-2"
    tops = [label for label in results if label.startswith("top-")]
    return min(tops, key=lambda label: results[label]["evaluate"]["fid"]) if tops else None


# a paired verdict on (sparse − full), read as full compared with sparse
_FULL_VS_SPARSE = {"lower": "higher", "higher": "lower", "not separable": "overlapping"}


def dissociation(results: Results, contrast: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verdicts for full vs the sparse reference: quality (FID), stability (amplification), convergence.

    With ``contrast`` (metrics/contrast.json) holding the sparse policy, the verdicts come from the paired
    intervals of the differences; otherwise from whether the two marginal 95% intervals overlap.
    """
    sparse = sparse_reference(results)
    if "full" not in results or sparse is None:
        return {"sparse": sparse, "holds": None}
    key = headline_eps(results)
    paired = (contrast or {}).get("contrasts", {}).get(sparse)
    if paired is not None and key in paired["amplification"]:
        fid = _FULL_VS_SPARSE[paired["fid"]["verdict"]]
        amp = _FULL_VS_SPARSE[paired["amplification"][key]["verdict"]]
        conv = _FULL_VS_SPARSE[paired["convergence_error"]["verdict"]]
        basis = "paired"
    else:
        full, top = results["full"], results[sparse]
        fid = compare(_interval(full["evaluate"], "fid", "fid_ci95"), _interval(top["evaluate"], "fid", "fid_ci95"))
        amp = compare(_interval(full["analyze"]["amplification"][key], "mean", "mean_ci95"),
                      _interval(top["analyze"]["amplification"][key], "mean", "mean_ci95"))
        conv = compare(_interval(full["analyze"]["convergence"]["error_at_nfe"], "mean", "mean_ci95"),
                       _interval(top["analyze"]["convergence"]["error_at_nfe"], "mean", "mean_ci95"))
        basis = "marginal"
    return {"sparse": sparse, "eps": eps_value(key), "fid": fid, "amplification": amp, "convergence": conv,
            "basis": basis, "holds": fid == "higher" and amp == "lower"}


def summary_text(results: Results, contrast: dict[str, Any] | None = None) -> str:
    v = dissociation(results, contrast)
    if v["holds"] is None:
        return ("The dissociation needs both `full` and a `top-k` policy in `policies`; this run has "
                f"{', '.join(results)}.")
    s, key = v["sparse"], headline_eps(results)
    full, top = results["full"], results[s]
    fe, te = full["evaluate"], top["evaluate"]
    fa, ta = full["analyze"]["amplification"][key], top["analyze"]["amplification"][key]
    fc, tc = full["analyze"]["convergence"]["error_at_nfe"], top["analyze"]["convergence"]["error_at_nfe"]
    words = {"lower": "lower than", "higher": "higher than", "overlapping": "not separable from"}
    if v["basis"] == "paired":
        c = contrast["contrasts"][s]  # type: ignore[index]
        lo, hi = c["fid"]["ci95"]
        alo, ahi = c["amplification"][key]["ci95"]
        clo, chi = c["convergence_error"]["ci95"]
        side = "excludes" if v["fid"] != "overlapping" else "contains"
        quality = (f"Quality: full has FID {fe['fid']:.2f}, {words[v['fid']]} {s}'s {te['fid']:.2f} "
                   f"(FID∞ of {s} − full = {c['fid']['estimate']:+.2f} [{lo:+.2f}, {hi:+.2f}]: the 95% interval of the "
                   f"difference, paired by seed, {side} 0).")
        stability = (f"Stability: full's mean amplification at ε={v['eps']} is {fa['mean']:.3g}, "
                     f"{words[v['amplification']]} {s}'s {ta['mean']:.3g} ({s} − full = "
                     f"{c['amplification'][key]['estimate']:+.3g} [{alo:+.3g}, {ahi:+.3g}]; {s} is lower on "
                     f"{c['amplification'][key]['frac_lower']:.0%} of the seeds).")
        convergence = (f"Convergence: full's RMS error against the {full['analyze']['convergence']['reference_steps']}"
                       f"-step reference is {fc['mean']:.3g}, {words[v['convergence']]} {s}'s {tc['mean']:.3g} "
                       f"({s} − full = {c['convergence_error']['estimate']:+.3g} [{clo:+.3g}, {chi:+.3g}]).")
    else:
        quality = (f"Quality: full has FID {fe['fid']:.2f}, {words[v['fid']]} {s}'s {te['fid']:.2f} "
                   "(95% intervals " + ("do not overlap" if v["fid"] != "overlapping" else "overlap") + ").")
        stability = (f"Stability: full's mean amplification at ε={v['eps']} is {fa['mean']:.3g}, "
                     f"{words[v['amplification']]} {s}'s {ta['mean']:.3g}.")
        convergence = (f"Convergence: full's RMS error against the {full['analyze']['convergence']['reference_steps']}"
                       f"-step reference is {fc['mean']:.3g}, {words[v['convergence']]} {s}'s {tc['mean']:.3g}.")
    if v["holds"]:
        verdict = (f"The dissociation holds on this run: {s} samples better than the full ensemble, and the full "
                   "ensemble is the more stable sampler.")
    else:
        parts = []
        if v["fid"] != "higher":
            parts.append(f"{s} is not measurably better than full in FID")
        if v["amplification"] != "lower":
            parts.append(f"full is not measurably more stable than {s}")
        verdict = "The dissociation does not hold on this run: " + "; ".join(parts) + "."
    return " ".join([verdict, quality, stability, convergence])
