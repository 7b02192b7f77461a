"""`ddmbench spread`: run-to-run spread of every number over several runs of one profile, the measurement
the regression gate's contrast tolerances are set from (``ddmbench baseline --spread``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ddmbench.errors import ArtifactError
from ddmbench.tools.regression import SPREAD_MULTIPLE, flatten_metrics, headline_contrasts, kind_of


def spread(runs: dict[str, Path]) -> dict[str, Any]:
    """Run-to-run spread over several runs of one profile (e.g. training seeds with the evaluator fixed).

    ``runs``: label -> metrics folder. Per number held by every run (values, and the headline contrasts as
    ``contrast <name>``): n, mean, std (ddof=1), min, max, range (max - min), its kind, and for contrasts the
    tolerance ``ddmbench baseline --spread`` sets from it (SPREAD_MULTIPLE x range, before the baseline caps
    it at |effect| where its interval guards a sign). Numbers missing from some runs are listed.
    """
    if len(runs) < 2:
        raise ArtifactError("spread needs the metrics folders of at least 2 runs")
    flats: dict[str, dict[str, float]] = {}
    for label, d in runs.items():
        contrasts = headline_contrasts(d)
        flats[label] = {**{n: v for n, v in flatten_metrics(d).items() if kind_of(n) != "timing"},
                        **{f"contrast {n}": c.estimate for n, c in contrasts.items()}}
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
