"""`ddmbench spread`: run-to-run spread of every number over several runs of one profile, the measurement
the regression gate's contrast tolerances are set from (``ddmbench baseline --spread``). A run is a metrics
folder, or a baseline file, which holds the numbers of the run it froze: so runs made on other machines (other
float paths) join the spread through their committed baselines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ddmbench.errors import ArtifactError
from ddmbench.evaluation.contrast_record import FAMILIES, headline_name
from ddmbench.tools.regression import (
    REFERENCE,
    SPREAD_MULTIPLE,
    check_baseline,
    flatten_metrics,
    headline_contrasts,
    kind_of,
)

_POLICY = re.compile(r"^contrast\.json:contrasts\.(?P<policy>.+)\.fid\.estimate$")


def recorded_headline(values: dict[str, float]) -> dict[str, float]:
    """{headline contrast name: estimate} from a run's flattened numbers (``contrast.json:contrasts.<policy>.
    <family>[.<eps>].estimate``), as a baseline records them."""
    out = {}
    for policy in sorted(m["policy"] for name in values if (m := _POLICY.match(name))):
        prefix = f"contrast.json:contrasts.{policy}."
        for family in FAMILIES:
            if family == "amplification":
                eps = re.compile(re.escape(prefix) + r"amplification\.(eps_.+)\.estimate$")
                for name in sorted(values):
                    if m := eps.match(name):
                        out[headline_name(policy, f"amplification {m[1]}", REFERENCE)] = values[name]
            elif f"{prefix}{family}.estimate" in values:
                out[headline_name(policy, family, REFERENCE)] = values[f"{prefix}{family}.estimate"]
    return out


def run_numbers(source: Path) -> dict[str, float]:
    """Every non-timing number of a run and its headline contrasts as ``contrast <name>``: from a metrics folder,
    or from a baseline file (its recorded values and constants)."""
    if Path(source).is_file():
        doc = check_baseline(json.loads(Path(source).read_text()), source)
        flat = {**doc["values"], **doc["constants"]}
        contrasts = recorded_headline(flat)
    else:
        flat = flatten_metrics(source)
        contrasts = {n: d.estimate for n, d in headline_contrasts(source).items()}
    return {**{n: float(v) for n, v in flat.items() if kind_of(n) != "timing"},
            **{f"contrast {n}": v for n, v in contrasts.items()}}


def spread(runs: dict[str, Path]) -> dict[str, Any]:
    """Run-to-run spread over several runs of one profile (e.g. training seeds with the evaluator fixed).

    ``runs``: label -> metrics folder or baseline file. Per number held by every run (values, and the headline contrasts as
    ``contrast <name>``): n, mean, std (ddof=1), min, max, range (max - min), its kind, and for contrasts the
    tolerance ``ddmbench baseline --spread`` sets from it (SPREAD_MULTIPLE x range, before the baseline caps
    it at |effect| where its interval guards a sign). Numbers missing from some runs are listed.
    """
    if len(runs) < 2:
        raise ArtifactError("spread needs the metrics folders of at least 2 runs")
    flats = {label: run_numbers(d) for label, d in runs.items()}
    names = sorted(set.intersection(*(set(m) for m in flats.values())))
    metrics: dict[str, Any] = {}
    for name in names:
        values = [m[name] for m in flats.values()]
        n, mean = len(values), math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        rng = max(values) - min(values)
        kind = "contrast" if name.startswith("contrast ") else kind_of(name)
        metrics[name] = {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values), "range": rng,
                         "values": values, "kind": kind,
                         "tolerance": SPREAD_MULTIPLE * rng if kind == "contrast" else None}
    partial = sorted(set.union(*(set(m) for m in flats.values())) - set(names))
    return {"runs": list(runs), "multiple": SPREAD_MULTIPLE, "metrics": metrics, "missing_in_some_runs": partial}
