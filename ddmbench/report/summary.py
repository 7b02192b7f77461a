"""Verdicts on the paired contrasts and the report's generated summary, with no forking paths.

Only hypotheses declared in params before the run (``report.primary``) are judged as claims: each at
``report.alpha`` on its own two-sided p-value (no adjustment within the primary family: the headline claim,
the dissociation, is the conjunction of its primaries, an intersection–union test that is valid at alpha
without adjustment; Berger 1982). Every other difference in metrics/contrast.json is secondary and judged on
Holm–Bonferroni adjusted p-values over all secondaries. Nothing here looks at the numbers to decide what to
judge: no "best policy" is picked after the fact.

contrast.json schema read here: ``contrasts[policy][metric]`` (and ``contrasts[policy]["amplification"][
"eps_<e>"]``) is a paired difference policy − full with ``estimate``, ``ci95``, ``estimand`` and a
two-sided ``p_value``. An entry without them cannot be judged: ArtifactError, never an invented p-value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from ddmbench.analysis.stats import holm
from ddmbench.config import CONTRAST_METRICS, ReportConfig
from ddmbench.errors import ArtifactError

REQUIRED = ("estimate", "ci95", "estimand", "p_value")
QUALITY = ("fid", "kid")  # lower is better quality
Direction = Literal["lower", "higher", "not separable"]


class Verdict(TypedDict):
    """One judged difference ``policy − versus`` in ``metric`` (the headline renders the primaries)."""

    policy: str
    versus: str
    metric: str            # fid, kid, convergence_error, lipschitz, amplification@<eps>
    family: Literal["primary", "secondary"]
    estimate: float
    ci95: list[float]      # [low, high] as contrast.json gives it
    estimand: str
    p_value: float         # two-sided, unadjusted
    p_adjusted: float      # = p_value for a primary; Holm over the secondaries otherwise
    alpha: float
    verdict: Direction     # sign of the estimate when p_adjusted < alpha, else "not separable"


def contrast_entries(contrast: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(policy, metric): entry} for every paired difference in contrast.json, amplification as
    ``amplification@<eps>``, in file order."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for policy, c in contrast.get("contrasts", {}).items():
        for key, entry in c.items():
            if key == "amplification" and isinstance(entry, Mapping):
                for eps_key, e in entry.items():
                    out[(policy, f"amplification@{eps_key.removeprefix('eps_')}")] = dict(e)
            elif key in CONTRAST_METRICS and isinstance(entry, Mapping):
                out[(policy, key)] = dict(entry)
    return out


def _direction(estimate: float, p: float, alpha: float) -> Direction:
    if p < alpha and estimate != 0:
        return "lower" if estimate < 0 else "higher"
    return "not separable"


def _verdict(policy: str, versus: str, metric: str, e: dict[str, Any], family: Literal["primary", "secondary"],
             p_adjusted: float, alpha: float) -> Verdict:
    return Verdict(policy=policy, versus=versus, metric=metric, family=family, estimate=float(e["estimate"]),
                   ci95=[float(x) for x in e["ci95"]], estimand=str(e["estimand"]), p_value=float(e["p_value"]),
                   p_adjusted=float(p_adjusted), alpha=alpha,
                   verdict=_direction(float(e["estimate"]), p_adjusted, alpha))


def judge(contrast: Mapping[str, Any], declared: ReportConfig) -> list[Verdict]:
    """The declared primaries (in declared order), then every other difference with Holm-adjusted p-values.

    Raises ArtifactError when a declared difference is absent from contrast.json or any judged entry lacks
    ``estimate``/``ci95``/``estimand``/``p_value``.
    """
    entries = contrast_entries(contrast)
    for (policy, metric), e in entries.items():
        missing = [k for k in REQUIRED if e.get(k) is None]
        if missing:
            raise ArtifactError(f"metrics/contrast.json: {policy} − full in {metric} has no {', '.join(missing)}; "
                                "re-run `ddmbench contrast` with a ddmbench that records them (no verdict "
                                "is given without a p-value)")
    primary_keys = [(h.policy, m) for h in declared.primary for m in h.metrics]
    for policy, metric in primary_keys:
        if (policy, metric) not in entries:
            raise ArtifactError(f"metrics/contrast.json has no {policy} − full in {metric}, a primary hypothesis "
                                "of report.primary; re-run `dvc repro contrast` with this params file")
    versus = {h.policy: h.versus for h in declared.primary}
    out = [_verdict(p, versus[p], m, entries[(p, m)], "primary", entries[(p, m)]["p_value"], declared.alpha)
           for p, m in dict.fromkeys(primary_keys)]
    secondary = [k for k in entries if k not in set(primary_keys)]
    adjusted = holm([float(entries[k]["p_value"]) for k in secondary]) if secondary else []
    reference = contrast.get("reference") or "full"
    out += [_verdict(p, reference, m, entries[(p, m)], "secondary", adj, declared.alpha)
            for (p, m), adj in zip(secondary, adjusted)]
    return out


def primary_verdicts(contrast: Mapping[str, Any], declared: ReportConfig) -> list[Verdict]:
    """The headline: only the declared primary hypotheses, as judged by :func:`judge`."""
    return [v for v in judge(contrast, declared) if v["family"] == "primary"]


def dissociation(verdicts: list[Verdict]) -> dict[str, Any]:
    """The dissociation for the first declared policy whose primaries include a quality metric (fid/kid)
    and an amplification: it holds when the policy is lower in every declared quality metric and higher
    in every declared amplification (the full ensemble more stable). ``holds`` is None when not declared."""
    for policy in dict.fromkeys(v["policy"] for v in verdicts if v["family"] == "primary"):
        mine = [v for v in verdicts if v["family"] == "primary" and v["policy"] == policy]
        quality = [v for v in mine if v["metric"] in QUALITY]
        stability = [v for v in mine if v["metric"].startswith("amplification@")]
        if quality and stability:
            holds = all(v["verdict"] == "lower" for v in quality) and all(v["verdict"] == "higher" for v in stability)
            return {"policy": policy, "holds": holds, "quality": quality, "stability": stability}
    return {"policy": None, "holds": None, "quality": [], "stability": []}


def _sentence(v: Verdict) -> str:
    lo, hi = v["ci95"]
    judged = {"lower": f"{v['policy']} is lower", "higher": f"{v['policy']} is higher",
              "not separable": "not separable from 0"}[v["verdict"]]
    return (f"{v['policy']} − {v['versus']} in {v['metric']} = {v['estimate']:+.3g} [{lo:+.3g}, {hi:+.3g}] "
            f"({v['estimand']}), p = {v['p_value']:.2g} at α = {v['alpha']:g}: {judged}.")


def summary_text(contrast: Mapping[str, Any] | None, declared: ReportConfig) -> str:
    """The report's summary: the declared primary verdicts, the dissociation they test, and how many
    secondary contrasts separate after Holm. Says why when nothing can be judged."""
    if not declared.primary:
        return ("The dissociation is not judged: no primary hypotheses are declared (report.primary in params); "
                "Table 6 lists every paired contrast as secondary, Holm-adjusted.")
    if not contrast or not contrast.get("contrasts"):
        return "The dissociation is not judged: metrics/contrast.json holds no paired contrasts (run `ddmbench contrast`)."
    try:
        verdicts = judge(contrast, declared)
    except ArtifactError as exc:
        return f"The dissociation is not judged: {exc}."
    d = dissociation(verdicts)
    if d["holds"] is None:
        head = ("The dissociation is not tested: the declared primaries do not pair a quality metric (fid, kid) "
                "with an amplification for one policy.")
    elif d["holds"]:
        head = (f"The dissociation holds on this run, as declared: {d['policy']} is better than full in quality "
                "and full is the more stable sampler.")
    else:
        head = (f"The dissociation does not hold on this run: the declared primaries for {d['policy']} are not "
                "all in its direction (lower quality metric, higher amplification than full).")
    primaries = " ".join("Primary: " + _sentence(v) for v in verdicts if v["family"] == "primary")
    secondary = [v for v in verdicts if v["family"] == "secondary"]
    separated = sum(v["verdict"] != "not separable" for v in secondary)
    tail = (f"Secondary: {separated} of {len(secondary)} other paired contrasts separate from 0 after Holm "
            f"adjustment at α = {declared.alpha:g} (Table 6); none of them is a claim of this run.")
    return " ".join([head, primaries, tail])
