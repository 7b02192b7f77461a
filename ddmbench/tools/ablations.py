"""`ddmbench ablations`: one table of the ablation sweep (K, clustering method, ...) from DVC experiments.

Each row is one experiment of ``dvc exp show --json`` (DVC 3.x: a list of commits, each with ``data``
{params: {"params.yaml": {data}}, metrics: {path: {data}}} and ``experiments`` [{revs: [row, ...]}]),
or the current workspace's metrics files. Rows carry the swept params, the clustering's metrics,
every policy's FID/KID and the run's paired contrasts; nothing here runs a model.

:func:`grid` is the mechanism ablation as one result: rows grouped into cells (K, clustering), each cell's
paired ``policy − full`` (from every seed's metrics/contrast.json) summarised across its training seeds
with a Student-t interval, and each cell's total training steps so that a reader can check the compute
matching.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddmbench.errors import ArtifactError, first_line

EVAL_METRIC = re.compile(r"^metrics/evaluate/(?P<label>[^/]+)\.json$")
PARAM_COLUMNS = (("K", "cluster.k"), ("method", "cluster.method"), ("features", "cluster.features"),
                 ("balance", "cluster.balance"), ("dataset", "data.dataset"), ("expert net", "expert.net"))
CLUSTER_COLUMNS = (("purity", "purity"), ("NMI", "nmi"), ("size CV", "size_cv"))


@dataclass
class Row:
    """One experiment: name, git rev, its params (nested, as in params.yaml) and metrics per file."""

    name: str
    rev: str
    params: dict[str, Any]
    cluster: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)   # policy label -> metrics
    contrast: dict[str, Any] = field(default_factory=dict)              # metrics/contrast.json

    def param(self, dotted: str) -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def _row(name: str, rev: str, data: dict[str, Any]) -> Row:
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = data.get("metrics") or {}
    row = Row(name=name, rev=rev, params=params,
              cluster=(metrics.get("metrics/cluster.json") or {}).get("data") or {},
              contrast=(metrics.get("metrics/contrast.json") or {}).get("data") or {})
    for path, blob in metrics.items():
        match = EVAL_METRIC.match(path)
        if match and isinstance((blob or {}).get("data"), dict):
            row.evaluate[match["label"]] = blob["data"]
    return row


def rows_from_exp_show(doc: Any, *, include_workspace: bool = False) -> list[Row]:
    """Rows of a ``dvc exp show --json`` document: every baseline commit and every experiment on it.

    Entries with an ``error`` (a failed or still-queued experiment) or with no metrics (a commit that was
    never reproduced) are skipped. The workspace row repeats the last applied experiment, so it is left
    out unless asked for.
    """
    if not isinstance(doc, list):
        raise ArtifactError("dvc exp show --json: expected a list of commits; is this DVC 3.x output?")
    rows: list[Row] = []

    def add(entry: dict[str, Any], default_name: str) -> None:
        if entry.get("error") or not isinstance(entry.get("data"), dict) or not entry["data"].get("metrics"):
            return
        rev = str(entry.get("rev") or "")
        rows.append(_row(str(entry.get("name") or default_name or rev[:7]), rev, entry["data"]))

    for commit in doc:
        if not isinstance(commit, dict):
            continue
        if commit.get("rev") == "workspace":
            if include_workspace:
                add(commit, "workspace")
            continue
        add(commit, str(commit.get("rev", ""))[:7])
        for group in commit.get("experiments") or []:
            for exp in group.get("revs") or []:
                add(exp, str(group.get("name") or ""))
    return rows


def row_from_workspace(root: Path, params: dict[str, Any]) -> Row:
    """The current workspace's metrics files (metrics/cluster.json, metrics/evaluate/<policy>.json) as one row.
    Only the policies ``params`` lists are read: an evaluate file of another policy is left over from an
    earlier profile in the same folder (e.g. the published default run), not part of this run."""
    from ddmbench.io import read_json

    row = Row(name="workspace", rev="workspace", params=params)
    if not (root / "metrics").is_dir():
        raise ArtifactError(f"{root / 'metrics'} is missing and there are no experiments to list; "
                            "run `dvc repro` or `dvc exp run` first")
    cluster = root / "metrics" / "cluster.json"
    if cluster.exists():
        row.cluster = read_json(cluster, "ddmbench cluster")
    listed = params.get("policies")
    for path in sorted((root / "metrics" / "evaluate").glob("*.json")):
        if listed is None or path.stem in listed:
            row.evaluate[path.stem] = read_json(path, f"ddmbench evaluate --policy {path.stem}")
    contrast = root / "metrics" / "contrast.json"
    if contrast.exists():
        row.contrast = read_json(contrast, "ddmbench contrast")
    return row


def run_params(root: Path) -> dict[str, Any]:
    """A finished run folder's params.yaml; one ArtifactError line when it is missing or not YAML."""
    import yaml

    params_file = root / "params.yaml"
    if not params_file.is_file():
        raise ArtifactError(f"{params_file} is missing: --from-runs takes folders of finished runs "
                            "(params.yaml and metrics/)")
    try:
        return yaml.safe_load(params_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ArtifactError(f"{params_file} is not valid YAML ({first_line(exc)})") from None


def row_from_run(root: Path) -> Row:
    """A finished run's folder (its params.yaml and metrics/) as one row named by the folder."""
    row = row_from_workspace(root, run_params(root))
    row.name, row.rev = root.name, ""
    return row


def exp_show(root: Path, timeout_s: float = 300.0) -> Any:
    """Run ``dvc exp show --json`` in ``root`` and parse it; any failure is one ArtifactError line."""
    dvc = shutil.which("dvc")
    if dvc is None:
        raise ArtifactError("dvc is not installed; `pip install dvc` or pass --from-json FILE")
    try:
        proc = subprocess.run([dvc, "exp", "show", "--json"], cwd=root, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"dvc exp show did not finish in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise ArtifactError(f"dvc exp show failed: {first_line(proc.stderr or proc.stdout)}; "
                            "run it in a DVC repository with at least one commit")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ArtifactError("dvc exp show --json printed something that is not JSON") from None


def policies_of(rows: list[Row]) -> list[str]:
    """Policy labels evaluated in any row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row.evaluate))
    return list(seen)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """(header, cells): the swept params, cluster metrics, then FID per policy; sorted by method, K, name."""
    policies = policies_of(rows)
    header = ["experiment", "rev", *(h for h, _ in PARAM_COLUMNS), *(h for h, _ in CLUSTER_COLUMNS),
              *(f"FID {p}" for p in policies)]
    ordered = sorted(rows, key=lambda r: (str(r.param("cluster.method")), r.param("cluster.k") or 0, r.name))
    cells = [[row.name, row.rev[:7], *(_fmt(row.param(key)) for _, key in PARAM_COLUMNS),
              *(_fmt(row.cluster.get(key)) for _, key in CLUSTER_COLUMNS),
              *(_fmt(row.evaluate.get(p, {}).get("fid")) for p in policies)] for row in ordered]
    return header, cells


def markdown(rows: list[Row], source: str) -> str:
    """The ablation table as Markdown, with a line on where the rows came from."""
    header, cells = table(rows)
    lines = ["# Ablations", "", f"{len(rows)} runs from {source}. FID is in the evaluator's feature space "
             "(lower is better); size CV is the coefficient of variation of the cluster sizes (0 = equal).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def clustering_label(row: Row) -> str:
    """A cell's clustering: ``random``, or ``<method> on <features>`` (e.g. ``two-stage on embedder``)."""
    method = str(row.param("cluster.method"))
    return method if method == "random" else f"{method} on {row.param('cluster.features')}"


def training_steps(row: Row) -> tuple[int, int]:
    """(DDM total expert steps = K x expert.steps, monolith steps; null = the DDM's total), at one batch size
    each: equal steps, net and batch mean equal training FLOPs (routers and evaluator aside)."""
    k, steps = int(row.param("cluster.k") or 0), int(row.param("expert.steps") or 0)
    mono = row.param("monolith.steps")
    return k * steps, int(mono) if mono is not None else k * steps


def grid(rows: list[Row], policy: str = "top-2", metric: str = "kid", level: float = 0.95) -> list[dict[str, Any]]:
    """One entry per (clustering, K) cell, sorted by clustering then K: every seed's paired ``policy − full``
    estimate in ``metric`` (from its contrast.json), the between-seed mean, sd and Student-t interval
    (R >= 3; None below), the seeds agreeing in sign, and the cell's training steps. Rows without that
    contrast are skipped; a cell whose runs differ in training steps is refused (not compute-matched)."""
    import numpy as np

    from ddmbench.analysis.stats import t_interval
    from ddmbench.report.summary import contrast_entries

    cells: dict[tuple[str, int], list[tuple[Row, float]]] = {}
    for row in rows:
        entry = contrast_entries(row.contrast).get((policy, metric)) if row.contrast else None
        if entry is None or entry.get("estimate") is None:
            continue
        cells.setdefault((clustering_label(row), int(row.param("cluster.k") or 0)), []).append(
            (row, float(entry["estimate"])))
    out = []
    for (clustering, k), members in sorted(cells.items()):
        steps = {training_steps(r) for r, _ in members}
        if len(steps) > 1:
            raise ArtifactError(f"cell K={k}, {clustering}: its runs differ in training steps {sorted(steps)}; "
                                "a cell's seeds must share one budget")
        seeds = [r.param("seed") for r, _ in members]
        if len(set(seeds)) != len(seeds):
            raise ArtifactError(f"cell K={k}, {clustering}: seed repeated in {seeds}; keep one run per seed")
        values = np.array([v for _, v in members])
        ddm, mono = steps.pop()
        out.append({"clustering": clustering, "k": k, "policy": policy, "versus": "full", "metric": metric,
                    "per_seed": [{"seed": s, "experiment": r.name, "estimate": v} for s, (r, v) in zip(seeds, members)],
                    "r": len(values), "mean": float(values.mean()),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "ci95": list(t_interval(values, level)) if len(values) >= 3 else None,
                    "agree_in_sign": int(max((values > 0).sum(), (values < 0).sum())),
                    "ddm_steps": ddm, "monolith_steps": mono})
    return out


def _interval(cell: dict[str, Any]) -> str:
    return "n/a (R < 3)" if cell["ci95"] is None else f"[{cell['ci95'][0]:+.4g}, {cell['ci95'][1]:+.4g}]"


def grid_table(cells: list[dict[str, Any]]) -> Any:
    """The grid as a rich table (one row per cell)."""
    from rich.table import Table

    c0 = cells[0]
    tbl = Table(title=f"{c0['policy']} − full in {c0['metric']} by K and clustering (mean over training seeds, "
                      "95% t-interval)")
    for col in ("clustering", "K", "R", "per seed", "mean [95% CI]", "agree in sign", "DDM / monolith steps"):
        tbl.add_column(col, justify="left" if col == "clustering" else "right")
    for c in cells:
        tbl.add_row(c["clustering"], str(c["k"]), str(c["r"]), ", ".join(f"{s['estimate']:+.3g}" for s in c["per_seed"]),
                    f"{c['mean']:+.4g} {_interval(c)}", f"{c['agree_in_sign']} of {c['r']}",
                    f"{c['ddm_steps']} / {c['monolith_steps']}")
    return tbl


def grid_markdown(cells: list[dict[str, Any]]) -> str:
    """The grid as a Markdown table (one row per cell)."""
    if not cells:
        return ""
    c0 = cells[0]
    lines = [f"## {c0['policy']} − full in {c0['metric']} by K and clustering, across training seeds", "",
             "Each run's paired estimate (same seeds, same models); mean over the cell's training seeds with a "
             "Student-t 95% interval (R ≥ 3). Training steps: K × expert.steps for the DDM and the monolith's, at "
             "one net and batch size each, so equal steps are equal training FLOPs.", "",
             "| clustering | K | R | per seed | mean [95% t-interval] | seeds agreeing in sign | DDM / monolith steps |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['clustering']} | {c['k']} | {c['r']} | "
                     + ", ".join(f"{s['estimate']:+.4g}" for s in c["per_seed"])
                     + f" | {c['mean']:+.4g} {_interval(c)} | {c['agree_in_sign']} of {c['r']} | "
                     f"{c['ddm_steps']} / {c['monolith_steps']} |")
    return "\n".join(lines) + "\n"
