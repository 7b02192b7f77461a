"""`ddmbench ablations`: one table of the ablation sweep (K, clustering method, ...) from DVC experiments.

Each row is one experiment of ``dvc exp show --json`` (DVC 3.x: a list of commits, each with ``data``
{params: {"params.yaml": {data}}, metrics: {path: {data}}} and ``experiments`` [{revs: [row, ...]}]),
or the current workspace's metrics files. Rows carry the swept params, the clustering's metrics and
every policy's FID/KID; nothing here runs a model.
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
              cluster=(metrics.get("metrics/cluster.json") or {}).get("data") or {})
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
    """The current workspace's metrics files (metrics/cluster.json, metrics/evaluate/*.json) as one row."""
    from ddmbench.io import read_json

    row = Row(name="workspace", rev="workspace", params=params)
    if not (root / "metrics").is_dir():
        raise ArtifactError(f"{root / 'metrics'} is missing and there are no experiments to list; "
                            "run `dvc repro` or `dvc exp run` first")
    cluster = root / "metrics" / "cluster.json"
    if cluster.exists():
        row.cluster = read_json(cluster, "ddmbench cluster")
    for path in sorted((root / "metrics" / "evaluate").glob("*.json")):
        row.evaluate[path.stem] = read_json(path, f"ddmbench evaluate --policy {path.stem}")
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
