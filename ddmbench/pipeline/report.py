"""Stage `report`: reports/report.md and a self-contained reports/report.html with the six tables, the
figures (sample grids, FID vs amplification, per-t curves) and a summary generated from the numbers;
the per-t curves also go to reports/plots/ for `dvc plots show`, everything to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddmbench.config import Config
from ddmbench.console import console, show_table
from ddmbench.data.datasets import check_sample_images
from ddmbench.errors import ArtifactError
from ddmbench.io import ensure_writable, load_tensors, read_json, write_json, write_text
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror
from ddmbench.report import figures, tables
from ddmbench.report.document import Document, fmt, fmt_ci, markdown_table, save_grid
from ddmbench.report.reliability import reliability_diagram
from ddmbench.report.summary import dissociation, judge, primary_verdicts, summary_text

# (curve field, y label, log scale) for the per-t figures and DVC plots
CURVES = (("lipschitz", "local Lipschitz: top singular value of ∂v/∂x, median over seeds (1/unit t)", True),
          ("hit_rate", "hit rate: top-weighted expert = argmax p* (fraction)", False),
          ("posterior_weight", "weight on the state's clusters Σ w·p* (fraction)", False),
          ("disagreement_router", "router-weighted expert disagreement (velocity variance per pixel)", True))

# The headline: the declared primary contrasts, one row per (policy, versus, metric).
HEADLINE_KEYS = ("policy", "versus", "metric", "estimate", "ci95", "estimand", "p_value", "verdict")


def headline_contrasts(cfg: Config, contrast: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The declared primary hypotheses (report.primary) as judged from metrics/contrast.json, as dicts with
    HEADLINE_KEYS; [] when none are declared or contrast.json cannot be judged (the summary says why)."""
    if not contrast or not cfg.report.primary:
        return []
    try:
        return [{k: v[k] for k in HEADLINE_KEYS} for v in primary_verdicts(contrast, cfg.report)]
    except ArtifactError:
        return []


def headline_table(rows: list[dict[str, Any]]) -> tables.Table:
    """The headline rows as (headers, rows) of strings."""
    headers = ["contrast", "metric", "estimate [95% CI]", "p", "verdict", "estimand"]
    return headers, [[f"{r['policy']} − {r['versus']}", r["metric"], fmt_ci(r["estimate"], r["ci95"], 3),
                      "–" if r["p_value"] is None else f"{r['p_value']:.2g}", str(r["verdict"] or "–"),
                      r["estimand"]] for r in rows]


def collect(cfg: Config, paths: Paths) -> tuple[tables.Results, dict[str, list[dict[str, Any]]]]:
    results, curves = {}, {}
    for label in cfg.policies:
        results[label] = {
            "evaluate": read_json(paths.eval_metrics(label), f"ddmbench evaluate --policy {label}"),
            "analyze": read_json(paths.analysis_metrics(label), f"ddmbench analyze --policy {label}"),
        }
        curves[label] = read_json(paths.curves(label), f"ddmbench analyze --policy {label}")
    return results, curves


def clustering_row(cl: dict[str, Any]) -> str:
    """How the partition was made: method on which features; for a clustering embedding, which network."""
    row = f"{cl['method']} on {cl['features']}" + (f" (fine k {cl['fine_k']})" if "fine_k" in cl else "")
    if "embedder_sha256" in cl:
        row += (f"; embedding: {cl['embedder_net']} trained {cl['embedder_steps']} steps from seed "
                f"{cl['embedder_seed']}, test accuracy {cl['embedder_test_acc']:.4f}, not the evaluator")
    return row


def ddm_rows(cfg: Config, paths: Paths) -> list[list[str]]:
    """How the DDM was made: its training here, or what `import-ddm` read."""
    cl = read_json(paths.cluster_metrics, "ddmbench cluster")
    if cfg.ddm.folder is not None:
        imported = read_json(paths.imported, "ddmbench import-ddm")
        kinds = [f"{e['path']}: {e['prediction']} ({e['convention']['kind']})" for e in imported["experts"]]
        lo, hi = imported["time_range"]
        rows = [["DDM", f"imported: {imported['name']} from {imported['folder']} ({len(imported['sha256'])} files, "
                        f"SHA-256 in {paths.import_metrics.relative_to(paths.root).as_posix()})"],
                ["experts K", str(cfg.cluster.k)], ["experts (prediction, convention)", "; ".join(kinds)],
                ["times every expert serves (the solver grid's range)", f"[{lo:.4g}, {hi:.4g}]"]]
        if "absent" in cl:
            return [*rows, ["clusters", f"none: {cl['absent']}; p*, the oracle and the per-cluster analyses "
                                        "are skipped"]]
        return [*rows, ["cluster sizes", ", ".join(map(str, cl["sizes"]))], ["clustering", f"the DDM's own ({cl['source']})"],
                ["cluster purity / NMI vs class labels", f"{cl['purity']:.3f} / {cl['nmi']:.3f}"]]
    router = read_json(paths.model_metrics("router"), "ddmbench train-router")
    experts = [read_json(paths.expert_metrics(k), f"ddmbench train-expert --expert {k}") for k in cfg.experts]
    return [["experts K", str(cfg.cluster.k)], ["cluster sizes", ", ".join(map(str, cl["sizes"]))],
            ["clustering", clustering_row(cl)],
            ["cluster purity / NMI vs digit labels", f"{cl['purity']:.3f} / {cl['nmi']:.3f}"],
            ["expert steps × batch", f"{cfg.expert.steps} × {cfg.expert.batch_size} ({cfg.expert.net})"],
            ["monolith steps × batch", f"{cfg.monolith_steps} × {cfg.monolith.batch_size} ({cfg.monolith.net})"],
            ["expert held-out loss", ", ".join(fmt(e["heldout_loss"], 4) for e in experts)],
            ["router held-out accuracy at t = 0 / 0.5 / 0.9",
             " / ".join(fmt(router["heldout"][f"acc_t{t}"], 3) for t in ("0", "0.5", "0.9"))]]


def setup_rows(cfg: Config, paths: Paths, results: tables.Results) -> list[list[str]]:
    evaluator = read_json(paths.model_metrics("evaluator"), "ddmbench train-evaluator")
    any_eval = next(iter(results.values()))["evaluate"]
    return [*ddm_rows(cfg, paths),
            ["evaluator test accuracy", fmt(evaluator["test_acc"], 4)],
            ["samples per policy / real test images", f"{any_eval['n_fake']} / {any_eval['n_real']}"],
            ["solver, steps", f"{cfg.sample.solver}, {cfg.sample.nfe_steps}"],
            ["traced seeds for the trajectory analyses", str(cfg.analysis.n)],
            ["FID of real training images at this N (the estimator's floor)", fmt(any_eval["fid_reference_train"])]]


def build(cfg: Config, paths: Paths, results: tables.Results, curves: dict[str, list[dict[str, Any]]],
          accuracy: dict[str, Any] | None, contrast: dict[str, Any] | None = None,
          calibration: dict[str, Any] | None = None) -> Document:
    def src(*files: Path) -> str:
        return "Source: " + ", ".join(f.relative_to(paths.root).as_posix() for f in files)

    each_eval, each_analyze = paths.eval_metrics("<policy>"), paths.analysis_metrics("<policy>")
    doc = Document("ddmbench report")
    doc.contents()
    doc.heading("Headline result")
    headline = headline_contrasts(cfg, contrast)
    if headline:
        doc.paragraph(f"The primary hypotheses declared in params before the run (report.primary), paired by seed: "
                      f"the estimate of the difference with its 95% interval and what it covers, the two-sided "
                      f"p-value, and the verdict at α = {cfg.report.alpha:g} ('lower'/'higher', or 'not separable'). "
                      "Below, the two policies' samples from the same seeds.")
        doc.table(*headline_table(headline), caption=src(paths.contrast_metrics), css="headline")
        shown = [headline[0]["versus"], headline[0]["policy"]]
        doc.images([(paths.sample_grid(label), label) for label in shown if label in results])
    else:
        doc.paragraph("No primary hypothesis judged on this run: declare them in params (report.primary) before "
                      "running, and run `ddmbench contrast` (the DVC pipeline does); the Summary says why.")
    doc.heading("Summary")
    doc.paragraph(summary_text(contrast, cfg.report))
    doc.heading("Setup")
    doc.table(["quantity", "value"], setup_rows(cfg, paths, results),
              caption="the resolved params; " + src(paths.cluster_metrics, paths.ddm_metrics,
                                                    paths.model_metrics("evaluator"), each_eval))

    doc.heading("Table 1 — routing policy vs quality, stability and cost")
    doc.paragraph("FD classifier and KID classifier: the Fréchet distance and KID in the evaluator classifier's "
                  "feature space (one evaluator, identified by the SHA-256 of its weights; not Inception's FID, which "
                  "appears as FID Inception when evaluate.feature_spaces lists it) against the test split, with 95% "
                  "grouped-jackknife intervals: the FD's "
                  "covers the expected FID at this N and number of real images, KID's (unbiased) the population "
                  "KID; FID∞ with its interval is in metrics/evaluate. Amplification: ‖x₀(z+εu) − x₀(z)‖/ε "
                  "over the traced seeds with the same routing draws replayed, mean with its interval. "
                  "Lipschitz: top singular value of the combined "
                  "field's Jacobian ∂v/∂x at the solver grid's states, routing weights held at the state's "
                  f"({cfg.analysis.power_iterations} power iterations on JᵀJ, a lower bound), "
                  "averaged over t, mean over seeds. "
                  "Convergence: RMS per pixel between the samples at the configured steps and at "
                  f"{cfg.analysis.reference_factor}× as many; order: slope of log error over the step ladder "
                  "(1 for Euler on a smooth field). Routing randomness (sample-k) is keyed by each sample's seed "
                  f"and a routing clock of {cfg.sample.routing_clock} equal cells over t ∈ [0, 1], so every "
                  "step count, the reference and every replay see the same draws over the same time interval. "
                  "Cost: expert forward passes per image (sparse dispatch), "
                  "GFLOPs measured with torch.utils.flop_counter, sampling throughput.")
    doc.table(*tables.quality_stability_cost(results), caption=src(each_eval, each_analyze))
    doc.image(paths.figure("fid_vs_amplification"), "FID against amplification per policy (95% intervals)")
    drawn = {name: paths.figure(f"curve_{name}") for name, _, _ in CURVES}
    if drawn["lipschitz"].exists():
        doc.image(drawn["lipschitz"], "local Lipschitz constant over t (median over seeds)")

    doc.heading("Table 2 — alignment against the exact cluster posterior p*")
    doc.paragraph("Ground truth: p*(k | x_t) ∝ Σ_{i∈k} N(x_t; (1−t)·x_i, t²·I) over the training images, at every "
                  "traced state (independent of the policy, its experts and its router). Σ w·p*: the weight the "
                  "policy puts on the clusters the state belongs to (1/K for uniform weights whatever the state); "
                  "hit rate: the top-weighted expert is argmax p* (– where the weights tie at the top); the same for "
                  "the router's p; KL(p* ‖ router). Effective training points 1/Σw_i²: where it is about 1 (on "
                  "MNIST below t ≈ 0.7), p* is the nearest training image's cluster, not a smooth density.")
    skipped = next((a["analyze"]["alignment"]["skipped"] for a in results.values()
                    if isinstance(a["analyze"].get("alignment"), dict) and "skipped" in a["analyze"]["alignment"]), None)
    if skipped is not None:
        doc.paragraph(f"Skipped: {skipped}; p* needs each expert's training images.")
    else:
        doc.table(*tables.alignment(results), caption=src(each_analyze) + " (alignment)")
    for name in ("hit_rate", "posterior_weight"):
        if drawn[name].exists():
            doc.image(drawn[name], name.replace("_", " ") + " over t")

    doc.heading("Table 3 — per-expert accuracy by t")
    if accuracy is None:
        doc.paragraph("Not computed: run `ddmbench expert-accuracy` (the DVC pipeline does).")
    elif "skipped" in accuracy:
        doc.paragraph(f"Skipped: {accuracy['skipped']}; the oracle expert and p* need each expert's training images.")
    else:
        doc.paragraph(f"Velocity MSE against the true target ε − x₀ on {accuracy.get('n', '?')} held-out test images "
                      "noised to each t: experts the router selects vs those it does not, the full ensemble's "
                      "router-weighted prediction, and the image's own cluster's expert (oracle). Specialisation: "
                      "on each cluster's images, the other experts' error over the cluster's own expert's error "
                      "(mean over clusters); near 1 the experts barely specialise and switching between them costs "
                      "little, which is the regime in which sparse routing has nothing to gain.")
        doc.table(*tables.expert_accuracy(accuracy), caption=src(paths.expert_accuracy))
        spec = [r.get("specialisation") for r in accuracy["rows"]]
        if all(isinstance(v, (int, float)) for v in spec) and spec:
            doc.paragraph("Specialisation on this run: " + ", ".join(
                f"{v:.2f} at t = {r['t']:g}" for v, r in zip(spec, accuracy["rows"])) + ".")

    doc.heading("Router calibration by t")
    if calibration is None:
        doc.paragraph("Not computed: run `ddmbench router-calibration` (the DVC pipeline does).")
    elif "skipped" in calibration:
        doc.paragraph(f"Skipped: {calibration['skipped']}; calibration scores the router against the clusters.")
    else:
        temp = calibration["temperature"]
        doc.paragraph(f"{calibration['n']} held-out test images noised to each t, scored against their cluster "
                      f"labels; (T): after temperature scaling with T = {fmt(temp['fitted'], 3)} fitted (minimum "
                      f"NLL) on {temp['fit_n']} other test images (applied when sampling: T = "
                      f"{fmt(temp['applied'], 3)}). p* acc.: the exact posterior's accuracy, the ceiling of any "
                      "router. " + " ".join(f"{k}: {v}." for k, v in calibration["definitions"].items()))
        doc.table(*tables.router_calibration(calibration), caption=src(paths.router_calibration))
        doc.image(paths.figure("router_reliability"), "router reliability diagram by t, before and after T")

    doc.heading("Table 4 — disagreement vs quality")
    doc.paragraph("Disagreement: weighted variance of the experts' velocity predictions around the combined "
                  "one, per pixel. Policy-weighted: the experts the policy mixed (all samples; 0 for one-expert "
                  "policies). Router-weighted: every expert weighted by the router (traced seeds). Spearman ρ "
                  "of per-sample policy-weighted disagreement with the evaluator's confidence and with the "
                  "distance to the nearest real feature, pooled and within the evaluator's predicted class "
                  "(class-size-weighted mean of per-class ρ); mean confidence and nearest-real distance of the "
                  "samples in the lowest and highest disagreement quantile, the quantiles cut within each "
                  "predicted class so that every quantile has the class mix of the whole set "
                  "(metrics/analyze/<policy>.json, disagreement).")
    doc.table(*tables.disagreement(results), caption=src(each_analyze) + " (disagreement)")
    if drawn["disagreement_router"].exists():
        doc.image(drawn["disagreement_router"], "router-weighted disagreement over t")

    doc.heading("Table 5 — inference strategies (layout of McAllister et al. Table 1)")
    doc.table(*tables.inference_strategies(results), caption=src(each_eval))

    doc.heading("Decomposition — the gap to the oracle: router part and expert part")
    split = tables.decomposition(results)
    if split[1]:
        doc.paragraph("FID at this N (Table 1's). Each policy's gap to the oracle (the expert of the cluster the "
                      "sample was drawn from) splits at its twin routed by the exact posterior p* with the same "
                      "experts: router part = FID(policy) − FID(twin), what a perfect router would recover; expert "
                      "part = FID(twin) − FID(oracle), what remains with ideal routing. Point estimates; their "
                      "paired intervals are not computed (contrast pairs every policy with full only).")
        doc.table(*split, caption=src(each_eval))
    else:
        doc.paragraph("No decomposition on this run: it needs `oracle` and a p*-routed twin (`posterior` for full, "
                      "`posterior-top-<k>` for top-<k>) in `policies`.")

    doc.heading("Table 6 — paired contrasts against the full ensemble")
    if contrast is None:
        doc.paragraph("Not computed: run `ddmbench contrast` (the DVC pipeline does).")
    elif not contrast.get("contrasts"):
        doc.paragraph(contrast.get("note", "No policy to contrast with full."))
    else:
        doc.paragraph("Every policy minus full on the same seeds (same initial noise, same perturbation "
                      "directions). ΔFID∞: FID∞(policy) − FID∞(full), the difference of the population Fréchet "
                      "distances, with a grouped-jackknife t interval (the same groups of seeds left out of both "
                      "policies). Δamplification, Δconvergence error, ΔLipschitz: mean per-seed difference over the "
                      "traced seeds with a paired t interval; 'seeds with lower amp.' is the fraction where the "
                      "policy is below full, with the paired t-test p-value. All intervals cover sampling noise "
                      "given these trained models (coverage measured in tests/test_coverage.py). "
                      "'lower'/'higher': the interval excludes 0. Paired intervals are narrower than Table 1's "
                      "marginal ones side by side, because per-seed results of two policies are correlated.")
        try:
            judged = judge(contrast, cfg.report)
        except ArtifactError as exc:  # no p-values: show the differences, judge nothing
            doc.paragraph(f"No verdicts: {exc}.")
            doc.table(*tables.contrasts(contrast, tables.headline_eps(results)), caption=src(paths.contrast_metrics))
        else:
            doc.paragraph(f"Primary hypotheses (report.primary, declared before the run) are judged at "
                          f"α = {cfg.report.alpha:g} on their own p-value; every other difference is secondary and "
                          "judged on Holm–Bonferroni adjusted p-values over all secondaries.")
            doc.table(*tables.verdicts(judged), caption=src(paths.contrast_metrics))

    doc.heading("Samples (first 64 seeds; the same seeds for every policy)")
    doc.images([(paths.sample_grid(label), label) for label in results])
    return doc


def _sample_images(paths: Paths, label: str) -> torch.Tensor:
    """uint8 (N, C, H, W) images of one policy's samples file."""
    what = f"ddmbench sample --policy {label}"
    return check_sample_images(load_tensors(paths.samples(label), what), paths.samples(label), what)


def write_plot_data(paths: Paths, curves: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """reports/plots/<curve>.json: [{t, policy, <curve>}] for every policy (DVC plots, template by_policy)."""
    written = []
    for name, _, _ in CURVES:
        rows = [{"t": row["t"], "policy": label, name: row[name]} for label, rs in curves.items() for row in rs
                if row.get(name) is not None]
        write_json(paths.plot_data(name), rows)
        written.append(paths.plot_data(name))
    return written


def run(cfg: Config, paths: Paths) -> tables.Results:
    results, curves = collect(cfg, paths)
    accuracy = (read_json(paths.expert_accuracy, "ddmbench expert-accuracy")
                if paths.expert_accuracy.exists() else None)
    contrast = read_json(paths.contrast_metrics, "ddmbench contrast") if paths.contrast_metrics.exists() else None
    calibration = (read_json(paths.router_calibration, "ddmbench router-calibration")
                   if paths.router_calibration.exists() else None)
    ensure_writable(paths.report_md, paths.report_html, *(paths.sample_grid(label) for label in results),
                    *(paths.figure(name) for name in ("fid_vs_amplification", "router_reliability",
                                                      *(f"curve_{c}" for c, _, _ in CURVES))),
                    *(paths.plot_data(c) for c, _, _ in CURVES))
    # read every input before writing anything, so a bad samples file leaves no partial report behind
    images = {label: _sample_images(paths, label) for label in results}
    for label, grid in images.items():
        save_grid(grid, paths.sample_grid(label))
    figures.fid_vs_amplification(results, paths.figure("fid_vs_amplification"))
    if calibration is not None and "skipped" not in calibration:
        reliability_diagram(calibration["rows"], paths.figure("router_reliability"), calibration["temperature"]["fitted"])
    for name, ylabel, log in CURVES:
        if not figures.curves_over_t(curves, name, ylabel, paths.figure(f"curve_{name}"), log=log):
            paths.figure(f"curve_{name}").unlink(missing_ok=True)
    plot_files = write_plot_data(paths, curves)
    doc = build(cfg, paths, results, curves, accuracy, contrast, calibration)
    write_text(paths.report_md, doc.markdown(paths.reports))
    write_text(paths.report_html, doc.html())

    show_table("routing policy vs quality, stability and cost", *tables.quality_stability_cost(results))
    console.print(summary_text(contrast, cfg.report))
    console.print(f"wrote {paths.report_md.relative_to(paths.root)} and {paths.report_html.relative_to(paths.root)}")
    verdict = _dissociation(cfg, contrast)
    figs = sorted(p for p in paths.figure("x").parent.glob("*.png"))
    headline = headline_contrasts(cfg, contrast)
    note = ("Report of this configuration: `report.html` (self-contained) and `report.md` in this run's "
            "artifacts; each table under `tables/`, figures under `figures/`, sample grids under `samples/`. "
            f"Local copy: {paths.report_html.resolve().as_uri()}")
    if headline:
        note += "\n\n**Headline result**\n\n" + markdown_table(*headline_table(headline))
    mirror(cfg, paths, "report", "report", {"policies": ",".join(cfg.policies)},
           {"dissociation_holds": float(bool(verdict["holds"])) if verdict["holds"] is not None else None,
            **{label: {"fid": r["evaluate"]["fid"], "kid": r["evaluate"]["kid"]} for label, r in results.items()},
            "headline": {r["metric"].replace("@", "_eps_"): {"estimate": r["estimate"], "ci95": r["ci95"]}
                         for r in headline}},
           [paths.report_md, paths.report_html, *((f, "plots") for f in plot_files), *((f, "figures") for f in figs),
            *((paths.sample_grid(label), "samples") for label in results)],
           tags={"mlflow.note.content": note, "report_html": paths.report_html.resolve().as_uri()},
           text={f"tables/{name}": text for name, text in doc.named_tables().items()})
    return results


def _dissociation(cfg: Config, contrast: dict[str, Any] | None) -> dict[str, Any]:
    """The declared dissociation's verdict for MLflow; holds None when it cannot be judged."""
    try:
        return dissociation(judge(contrast or {}, cfg.report))
    except ArtifactError:
        return {"holds": None}
