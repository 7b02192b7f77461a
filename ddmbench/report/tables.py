"""The report's five tables, as (headers, rows) of strings built from the stages' metrics JSON.

``results`` maps a policy label to {"evaluate": metrics/evaluate/<label>.json, "analyze":
metrics/analyze/<label>.json, "sample": metrics/sample/<label>.json}.
"""

from __future__ import annotations

from typing import Any

from ddmbench.report.document import fmt, fmt_ci

Table = tuple[list[str], list[list[str]]]
Results = dict[str, dict[str, Any]]


def headline_eps(results: Results) -> str:
    """The amplification key shown in Table 1: the middle of the configured eps list."""
    keys = next((list(r["analyze"]["amplification"]) for r in results.values()), [])
    return keys[len(keys) // 2] if keys else ""


def eps_value(key: str) -> str:
    return key.removeprefix("eps_")


# The standard feature spaces' distances, when evaluate computed them (metric key, column name).
STANDARD_SPACES = (("fid_inception", "FID Inception"), ("fd_dinov2", "FD DINOv2"))


def quality_stability_cost(results: Results) -> Table:
    """Table 1: policy vs FID/KID (95% jackknife CI), amplification, Lipschitz, convergence, cost."""
    key = headline_eps(results)
    extra = [(m, name) for m, name in STANDARD_SPACES if any(m in r["evaluate"] for r in results.values())]
    headers = ["policy", "FD classifier ↓ [95% CI]", "KID classifier ↓ [95% CI]",
               *(f"{name} ↓ [95% CI]" for _, name in extra), f"amplification ε={eps_value(key)} ↓ [95% CI]",
               "Lipschitz (mean over t)", "conv. error (RMS) ↓", "conv. order", "expert evals/img", "GFLOPs/img",
               "img/s"]
    rows = []
    for label, r in results.items():
        e, a, c = r["evaluate"], r["analyze"], r["evaluate"]["cost"]
        kid_ci = e.get("kid_ci95")
        amp = a["amplification"][key]
        kid = e.get("kid_unbiased", e["kid"])  # kid_ci95 is the interval of the unbiased all-pairs KID
        rows.append([label, fmt_ci(e["fid"], e.get("fid_ci95")), fmt_ci(kid, kid_ci, 3),
                     *(fmt_ci(e[m], e.get(f"{m}_ci95")) if m in e else "–" for m, _ in extra),
                     fmt_ci(amp["mean"], amp["mean_ci95"]), fmt(a["lipschitz"]["mean"]),
                     fmt(a["convergence"]["error_at_nfe"]["mean"], 4), fmt(a["convergence"]["order"]),
                     fmt(c["expert_evals_per_image"], 1), fmt(c["gflops_per_image"], 3), fmt(c["images_per_s"], 1)])
    return headers, rows


def alignment(results: Results) -> Table:
    """Table 2: alignment against the exact cluster posterior p* on the traced states (metrics/analyze)."""
    headers = ["policy", "weight on the state's clusters Σ w·p* ↑", "hit rate: top-weighted = argmax p* ↑",
               "router Σ p·p*", "router top-1 = argmax p*", "KL(p* ‖ router) ↓", "effective training points (median)"]
    rows = []
    for label, r in results.items():
        al = r["analyze"].get("alignment")
        if al is None:
            continue
        rows.append([label, fmt(al.get("posterior_weight"), 3), fmt(al.get("hit_rate"), 3),
                     fmt(al.get("router_posterior_weight"), 3), fmt(al.get("router_hit_rate"), 3),
                     fmt(al.get("kl_posterior_router"), 3), fmt(al.get("n_eff_median"), 1)])
    return headers, rows


def router_calibration(data: dict[str, Any]) -> Table:
    """Router calibration by t before / after temperature scaling, next to p* (metrics/router_calibration.json)."""
    headers = ["t", "router acc.", "p* acc.", "NLL", "NLL (T)", "Brier", "Brier (T)", "ECE", "ECE (T)",
               "KL(p* ‖ router)", "KL (T)", "eff. training points (median)", "split-half TV", "split-half argmax agree"]
    rows = [[fmt(r["t"]), fmt(r["router"]["accuracy"], 3), fmt(r["posterior"]["accuracy"], 3),
             fmt(r["router"]["nll"], 3), fmt(r["calibrated"]["nll"], 3), fmt(r["router"]["brier"], 3),
             fmt(r["calibrated"]["brier"], 3), fmt(r["router"]["ece"], 3), fmt(r["calibrated"]["ece"], 3),
             fmt(r["kl_posterior_router"], 3), fmt(r["kl_posterior_calibrated"], 3), fmt(r["n_eff"]["median"], 1),
             fmt(r["split_half"]["tv"], 3), fmt(r["split_half"]["argmax_agreement"], 3)] for r in data["rows"]]
    return headers, rows


ACCURACY_COLUMNS = (("selected_top1", "top-1 selected"), ("not_selected_top1", "not selected (top-1)"),
                    ("selected_top2", "top-2 selected"), ("not_selected_top2", "not selected (top-2)"),
                    ("full_ensemble", "full ensemble"), ("oracle_expert", "oracle expert"),
                    ("best_single_expert", "best single expert"), ("router_top1_is_oracle", "router top-1 = oracle"),
                    ("posterior_top1", "argmax-p* expert"), ("not_posterior_top1", "not argmax p*"),
                    ("posterior_weighted", "p*-weighted"), ("router_top1_is_posterior_top1", "router top-1 = argmax p*"),
                    ("own_cluster", "own expert on its cluster"), ("other_experts", "other experts there"),
                    ("specialisation", "specialisation (others / own)"))


def expert_accuracy(data: dict[str, Any]) -> Table:
    """Table 3: velocity MSE against the true target by t, per group of experts (metrics/expert_accuracy.json)."""
    present = [(k, name) for k, name in ACCURACY_COLUMNS if any(k in row for row in data["rows"])]
    headers = ["t"] + [name for _, name in present]
    rows = [[fmt(row["t"])] + [fmt(row.get(k), 3 if k.startswith("router_top1") or k == "specialisation" else 4)
                               for k, _ in present]
            for row in data["rows"]]
    return headers, rows


def disagreement(results: Results) -> Table:
    """Table 4: expert disagreement and per-sample quality, pooled ρ and within predicted class, and mean
    confidence / nearest-real distance in the lowest and highest disagreement quantile cut within class."""
    q = next((len(r["analyze"]["disagreement"]["by_quantile"]) for r in results.values()
              if r["analyze"].get("disagreement", {}).get("by_quantile")), 5)
    headers = ["policy", "disagreement (policy-w, all samples)", "disagreement (router-w, traced)",
               "ρ(disagr., confidence) pooled / within class", "ρ(disagr., nearest-real dist.) pooled / within class",
               f"confidence: lowest → highest quantile (of {q})", "nearest-real dist.: lowest → highest quantile"]
    rows = []
    for label, r in results.items():
        d = r["analyze"].get("disagreement")
        if d is None:
            continue
        quantiles = d["by_quantile"] or [{}]
        lo, hi = quantiles[0], quantiles[-1]
        rows.append([label, fmt(d["per_sample_mean"], 4), fmt(d["router_weighted"], 4),
                     f"{fmt(d['spearman_confidence']['rho'])} / {fmt(d.get('spearman_confidence_within_class'))}",
                     f"{fmt(d['spearman_nn_distance']['rho'])} / {fmt(d.get('spearman_nn_distance_within_class'))}",
                     f"{fmt(lo.get('confidence'), 3)} → {fmt(hi.get('confidence'), 3)}",
                     f"{fmt(lo.get('nn_distance'), 3)} → {fmt(hi.get('nn_distance'), 3)}"])
    return headers, rows


def inference_strategies(results: Results) -> Table:
    """Table 5: McAllister et al. Table 1 layout (strategy, GFLOPs per image, FID), monolith and oracle first."""
    order = sorted(results, key=lambda label: (label not in ("monolith", "oracle"), label != "monolith"))
    rows = [[label, fmt(results[label]["evaluate"]["cost"]["gflops_per_image"], 3), fmt(results[label]["evaluate"]["fid"])]
            for label in order]
    return ["inference strategy", "GFLOPs/img", "FD classifier ↓"], rows


def posterior_counterpart(label: str) -> str | None:
    """The policy that routes like ``label`` but by the exact posterior p* instead of the router:
    full -> posterior, top-k -> posterior-top-k; None for the others."""
    if label == "full":
        return "posterior"
    if label.startswith("top-"):
        return f"posterior-{label}"
    return None


def decomposition(results: Results) -> Table:
    """Each routed policy's FID gap to the oracle split at its p*-routed counterpart (same experts, ideal
    router): router part = FID(policy) − FID(p*-routed), expert part = FID(p*-routed) − FID(oracle). Rows only
    for policies whose counterpart and the oracle were run."""
    headers = ["policy", "p*-routed twin", "FD cls.", "FD cls. twin", "FD cls. oracle", "gap to oracle", "router part",
               "expert part"]
    rows = []
    if "oracle" not in results:
        return headers, rows
    oracle = results["oracle"]["evaluate"]["fid"]
    for label, r in results.items():
        twin = posterior_counterpart(label)
        if twin is None or twin not in results:
            continue
        fid, fid_twin = r["evaluate"]["fid"], results[twin]["evaluate"]["fid"]
        rows.append([label, twin, fmt(fid), fmt(fid_twin), fmt(oracle), f"{fid - oracle:+.2f}",
                     f"{fid - fid_twin:+.2f}", f"{fid_twin - oracle:+.2f}"])
    return headers, rows


def contrasts(data: dict[str, Any], eps_key: str) -> Table:
    """Every policy minus full, paired by seed (metrics/contrast.json, :mod:`ddmbench.evaluation.contrast_record`),
    as the contrast stage wrote it. The report's Table 6 is :func:`verdicts`."""
    headers = ["policy − full", "ΔFD∞ classifier [95% CI]", "FD classifier", f"Δamplification ε={eps_value(eps_key)} [95% CI]",
               "amplification", "seeds with lower amp.", "p (amp.)", "Δconv. error [95% CI]", "conv. error",
               "ΔLipschitz [95% CI]"]
    rows = []
    for label, c in data.get("contrasts", {}).items():
        fid, amp = c["fid"], c["amplification"].get(eps_key)
        conv, lip = c["convergence_error"], c["lipschitz"]
        rows.append([label, _diff(fid), fid.get("verdict", "–"), _diff(amp, 3) if amp else "–",
                     amp.get("verdict", "–") if amp else "–",
                     fmt(amp.get("frac_lower"), 2) if amp else "–",
                     _p_value(amp.get("p_value", amp.get("wilcoxon_p"))) if amp else "–",
                     _diff(conv, 4), conv.get("verdict", "–"), _diff(lip, 3)])
    return headers, rows


def _diff(d: dict[str, Any], digits: int = 2) -> str:
    return fmt_ci(d["estimate"], d["ci95"], digits)


def verdicts(judged: list[dict[str, Any]]) -> Table:
    """Table 6: every paired difference policy − full (ddmbench.report.summary.judge), primaries first:
    estimate [95% CI], its estimand, two-sided p, the p the verdict uses (Holm over the secondaries) and
    the verdict at alpha."""
    headers = ["policy − full", "metric", "hypothesis", "estimate [95% CI]", "estimand", "p", "p used (Holm)",
               "verdict"]
    rows = [[v["policy"], v["metric"], v["family"], "{:+.3g} [{:+.3g}, {:+.3g}]".format(v["estimate"], *v["ci95"]),
             v["estimand"],
             _p_value(v["p_value"]), _p_value(v["p_adjusted"]) if v["family"] == "secondary" else "(declared)",
             v["verdict"]] for v in judged]
    return headers, rows


def replication(data: dict[str, Any]) -> Table:
    """Headline differences across training seeds (reports/replicate.json, ``ddmbench replicate``): each
    seed's estimate with its own 95% interval (sampling noise given that seed's trained models), then the
    between-seed mean with its t-interval and the seeds agreeing in sign (training-seed variation)."""
    headers = ["policy − full", "metric", "per seed: estimate [95% CI, sampling]",
               "mean over seeds [95% t-interval, training]", "seeds agreeing in sign"]
    rows = []
    for c in data.get("contrasts", []):
        b = c["between_seeds"]
        per_seed = "; ".join(f"seed {s['seed']}: " + (f"{s['estimate']:+.3g} [{s['ci95'][0]:+.3g}, {s['ci95'][1]:+.3g}]"
                                                      if s.get("ci95") else f"{s['estimate']:+.3g}")
                             for s in c["per_seed"])
        between = f"{b['mean']:+.3g} " + (f"[{b['ci95'][0]:+.3g}, {b['ci95'][1]:+.3g}]" if b["ci95"] else "(R < 3)")
        rows.append([c["policy"], c["metric"], per_seed, between, f"{b['agree_in_sign']} of {b['r']}"])
    return headers, rows


def _p_value(p: float | None) -> str:
    return "–" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")
