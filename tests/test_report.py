"""The report stage on a synthetic metrics folder (no training): headline first, contents, captions that name
their metrics file, legible figures, and an MLflow report run that links its tables and figures."""

from __future__ import annotations

import html.parser
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Project

from ddmbench.io import save_tensors, write_json
from ddmbench.pipeline import report
from ddmbench.pipeline.paths import Paths
from ddmbench.report import figures
from ddmbench.report.document import Document, anchor

POLICIES = ["monolith", "full", "top-1", "top-2", "sample-2", "threshold-0.1"]
# Close together on purpose: point labels written beside the markers would overlap here.
FID = {"monolith": 30.0, "full": 31.0, "top-1": 30.5, "top-2": 30.8, "sample-2": 31.2, "threshold-0.1": 30.9}
AMP = {"monolith": 2.0, "full": 2.05, "top-1": 2.1, "top-2": 2.02, "sample-2": 2.07, "threshold-0.1": 2.04}


def _ci(x: float, half: float) -> list[float]:
    return [x - half, x + half]


def write_results(paths: Paths, policies: list[str], contrast: dict[str, Any] | None) -> None:
    """Every file the report stage reads, with made-up but well-formed numbers."""
    write_json(paths.cluster_metrics, {"sizes": [120, 120], "purity": 0.9, "nmi": 0.7, "method": "kmeans",
                                       "features": "pixel-pca"})
    write_json(paths.model_metrics("router"), {"heldout": {"acc_t0": 0.99, "acc_t0.5": 0.8, "acc_t0.9": 0.4}})
    write_json(paths.model_metrics("evaluator"), {"test_acc": 0.97})
    for k in (0, 1):
        write_json(paths.expert_metrics(k), {"heldout_loss": 0.3 + k / 100})
    write_json(paths.expert_accuracy, {"n": 64, "rows": [{"t": t, "selected_top1": 0.2, "full_ensemble": 0.25}
                                                         for t in (0.1, 0.5, 0.9)]})
    g = torch.Generator().manual_seed(0)
    for label in policies:
        cost = {"expert_evals_per_image": 20.0, "router_evals_per_image": 10.0, "gflops_per_image": 1.5,
                "nfe_per_sample": 10, "wall_time_s": 3.0, "images_per_s": 20.0}
        write_json(paths.eval_metrics(label), {
            "policy": label, "n_fake": 64, "n_real": 64, "fid": FID[label], "fid_ci95": _ci(FID[label], 1.0),
            "kid": 0.01, "kid_unbiased": 0.011, "kid_ci95": [0.005, 0.02], "fid_reference_train": 5.0, "cost": cost})
        write_json(paths.analysis_metrics(label), {
            "amplification": {f"eps_{e}": {"mean": AMP[label], "mean_ci95": _ci(AMP[label], 0.05)}
                              for e in ("0.01", "0.1", "1")},
            "lipschitz": {"mean": 3.0},
            "convergence": {"error_at_nfe": {"mean": 0.01, "mean_ci95": [0.009, 0.011]}, "order": 1.0,
                            "reference_steps": 160},
            "alignment": {"selected_distance": 1.0, "unselected_distance": 2.0, "nearest_distance": 0.9,
                          "hit_rate": 0.8, "router_hit_rate": 0.85},
            "disagreement": {"per_sample_mean": 0.01, "router_weighted": 0.02, "by_quantile": [{"fid": 40.0}],
                             "spearman_confidence": {"rho": -0.2}, "spearman_nn_distance": {"rho": 0.3}}})
        write_json(paths.curves(label), [{"t": t, "lipschitz": 1 + t, "hit_rate": t, "selected_distance": 2 - t,
                                          "disagreement_router": 0.01 + t} for t in (0.9, 0.5, 0.1)])
        save_tensors(paths.samples(label), {"images": torch.randint(0, 256, (64, 1, 28, 28), generator=g,
                                                                    dtype=torch.uint8),
                                            "seeds": torch.arange(64)})
    if contrast is not None:
        write_json(paths.contrast_metrics, contrast)


PRIMARY = {"primary": [{"policy": "top-2", "versus": "full", "metrics": ["kid", "amplification@0.1"]}], "alpha": 0.05}


def contrast_file() -> dict[str, Any]:
    """metrics/contrast.json as `contrast` writes it: every difference with estimate, ci95, estimand, p_value."""
    entry = {"estimate": -0.2, "ci95": [-0.5, 0.1], "estimand": "paired difference", "p_value": 0.2,
             "verdict": "not separable"}
    amp = {"estimate": -0.03, "ci95": [-0.05, -0.01], "estimand": "mean per-seed difference", "p_value": 0.004,
           "verdict": "lower", "frac_lower": 0.8}
    return {"reference": "full", "delta": "policy − full", "contrasts": {label: {
        "fid": entry, "kid": entry, "amplification": {f"eps_{e}": amp for e in ("0.01", "0.1", "1")},
        "convergence_error": entry, "lipschitz": entry} for label in POLICIES if label != "full"}}


@pytest.fixture
def synthetic(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(project.root)
    project.update(policies=POLICIES, tracking={"enabled": False}, report=PRIMARY)
    write_results(project.paths, POLICIES, contrast_file())
    return project


class _Blocks(html.parser.HTMLParser):
    """Headings (with ids), table captions and figure captions of an HTML page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, str, str]] = []  # (tag, id, text)
        self._open: tuple[str, str] | None = None
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("h1", "h2", "h3", "caption", "figcaption"):
            self._open = (tag, a.get("id") or "")
            self.items.append((tag, a.get("id") or "", ""))
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            tag, ident, text = self.items[-1]
            self.items[-1] = (tag, ident, text + data)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag == self._open[0]:
            self._open = None


@pytest.mark.slow
def test_report_opens_on_the_headline_with_contents_and_sourced_tables(synthetic: Project) -> None:
    report.run(synthetic.config(), synthetic.paths)
    page = _Blocks()
    page.feed(synthetic.paths.report_html.read_text())
    h2 = [(ident, text) for tag, ident, text in page.items if tag == "h2"]
    assert h2[0][1] == "Headline result" and h2[1][1] == "Summary"
    assert page.links == [ident for ident, _ in h2]  # the contents link every section, in order
    # the headline policies' sample grids side by side, right after the headline table
    html_text = synthetic.paths.report_html.read_text()
    headline = html_text[html_text.index('id="headline-result"'):html_text.index('id="summary"')]
    assert 'class="headline"' in headline and "top-2 − full" in headline
    assert re.findall(r"<figcaption>([^<]*)</figcaption>", headline) == ["full", "top-2"]
    assert headline.index('<div class="row">') > headline.index("</table>")
    # every table names the metrics file(s) it comes from, and they exist
    captions = [text for tag, _, text in page.items if tag == "caption"]
    assert len(captions) == html_text.count("<table")
    for caption in captions:
        named = re.findall(r"metrics/[\w/<>.-]+\.json", caption)
        assert named, caption
        for name in named:
            pattern = name.replace("<policy>", "*").replace("<k>", "*")
            assert list(synthetic.root.glob(pattern)), name
    # the Markdown twin: the same contents with GitHub anchors, and the captions under the tables
    md = synthetic.paths.report_md.read_text()
    assert md.index("## Headline result") < md.index("## Summary")
    assert "1. [Headline result](#headline-result)" in md and "*Source: metrics/contrast.json*" in md


def test_headline_is_the_declared_primaries_and_nothing_else(synthetic: Project) -> None:
    cfg = synthetic.config()
    rows = report.headline_contrasts(cfg, contrast_file())
    assert [(r["policy"], r["metric"]) for r in rows] == [("top-2", "kid"), ("top-2", "amplification@0.1")]
    assert all(set(r) == set(report.HEADLINE_KEYS) for r in rows)
    assert (rows[1]["estimate"], rows[1]["ci95"], rows[1]["p_value"], rows[1]["verdict"]) == (
        -0.03, [-0.05, -0.01], 0.004, "lower")
    assert rows[0]["verdict"] == "not separable"            # p = 0.2 at alpha 0.05
    assert report.headline_contrasts(cfg, None) == []
    no_p = contrast_file()
    del no_p["contrasts"]["top-2"]["kid"]["p_value"]      # never a verdict without a p-value
    assert report.headline_contrasts(cfg, no_p) == []
    synthetic.update(report={"primary": [], "alpha": 0.05})
    assert report.headline_contrasts(synthetic.config(), contrast_file()) == []  # nothing declared, nothing judged
    headers, cells = report.headline_table(rows)
    assert cells[1][:5] == ["top-2 − full", "amplification@0.1", "-0.030 [-0.050, -0.010]", "0.004", "lower"]


@pytest.mark.slow
def test_report_without_contrast_says_so_at_the_top(synthetic: Project) -> None:
    synthetic.paths.contrast_metrics.unlink()
    report.run(synthetic.config(), synthetic.paths)
    md = synthetic.paths.report_md.read_text()
    top = md[md.index("## Headline result"):md.index("## Summary")]
    assert "No primary hypothesis judged" in top and "ddmbench contrast" in top


def _overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts (ticks, labels, title, legend) whose rendered boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_fid_vs_amplification_is_legible_with_close_policies(synthetic: Project) -> None:
    results, _ = report.collect(synthetic.config(), synthetic.paths)
    fig = figures.fid_vs_amplification_figure(results)
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == POLICIES  # named by legend, not on the points
        assert not [t for t in ax.texts if t.get_text() in POLICIES]
        assert _overlaps(fig) == []
        assert "unitless" in ax.get_ylabel() and "per unit noise" in ax.get_xlabel()
        # each policy its own marker and colour
        styles = [(figures.style(i)["marker"], figures.style(i)["color"]) for i in range(len(POLICIES))]
        assert len(set(styles)) == len(POLICIES)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_named_tables_and_anchors() -> None:
    doc = Document("t")
    doc.heading("Table 1 — policy vs quality")
    doc.table(["a"], [["1"]], caption="Source: metrics/x.json")
    doc.table(["b"], [["2"]])
    assert anchor("Table 1 — policy vs quality") == "table-1--policy-vs-quality"
    [(name, text)] = doc.named_tables().items()
    assert name == "table-1--policy-vs-quality.md" and "| 1 |" in text and "| 2 |" in text
    assert "*Source: metrics/x.json*" in text


@pytest.mark.slow
def test_report_run_links_its_tables_and_figures(synthetic: Project, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    synthetic.update(tracking={"enabled": True, "uri": tracking_uri})
    cfg = synthetic.config()
    report.run(cfg, synthetic.paths)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    [run] = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "report"]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "figures", "samples", "plots", "tables"} <= top
    figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "fid_vs_amplification.png" in figs
    samples = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {f"{label}.png" for label in POLICIES}
    tables = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "tables")}
    assert "headline-result.md" in tables and "table-6--paired-contrasts-against-the-full-ensemble.md" in tables
    note = run.data.tags["mlflow.note.content"]
    assert "report.html" in note and "top-2 − full" in note and "tables/" in note
    assert run.data.tags["report_html"].startswith("file://")
    assert run.data.metrics["headline/kid/estimate"] == pytest.approx(-0.2)
    assert run.data.metrics["headline/amplification_eps_0.1/estimate"] == pytest.approx(-0.03)


def test_decomposition_splits_the_gap_to_the_oracle_at_the_posterior_twin() -> None:
    from ddmbench.report import tables

    fids = {"oracle": 10.0, "full": 20.0, "posterior": 14.0, "top-2": 15.0, "posterior-top-2": 12.0,
            "sample-1": 18.0, "top-1": 16.0}
    results = {label: {"evaluate": {"fid": f}} for label, f in fids.items()}
    headers, rows = tables.decomposition(results)
    by_policy = {r[0]: r for r in rows}
    assert set(by_policy) == {"full", "top-2"}            # top-1 has no twin here, sample-1 never has one
    assert by_policy["full"][5:] == ["+10.00", "+6.00", "+4.00"]   # gap = router part + expert part
    assert by_policy["top-2"][1] == "posterior-top-2" and by_policy["top-2"][5:] == ["+5.00", "+3.00", "+2.00"]
    del results["oracle"]
    assert tables.decomposition(results)[1] == []


def test_setup_names_the_clustering_and_its_embedding_net() -> None:
    from ddmbench.pipeline.report import clustering_row

    assert clustering_row({"method": "kmeans", "features": "pixel-pca"}) == "kmeans on pixel-pca"
    row = clustering_row({"method": "two-stage", "features": "embedder", "fine_k": 100, "embedder_sha256": "ab",
                          "embedder_net": "classifier-xs", "embedder_steps": 300, "embedder_seed": 3,
                          "embedder_test_acc": 0.97861})
    assert row == ("two-stage on embedder (fine k 100); embedding: classifier-xs trained 300 steps from seed 3, "
                   "test accuracy 0.9786, not the evaluator")
