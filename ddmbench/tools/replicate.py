"""`ddmbench replicate`: the headline paired contrasts across R training seeds, as DVC experiments.

Every interval a single run reports covers sampling noise given ONE set of trained models (the experts,
router, monolith and evaluator of that run). Whether a routing policy beats full is a claim about training
a DDM, so the same pipeline is re-run R times differing only in ``seed`` and each headline difference
(policy − full: the declared primaries, plus FID/KID and convergence error of the same policies) is
summarised across seeds: every seed's value, a between-seed Student-t interval (R >= 3) and how many
seeds agree in sign.

Scale-out stays on DVC: ``--run`` queues ``dvc exp run --queue -S seed=<s>`` per seed and starts
``dvc queue start --jobs N``; on a cluster each SLURM array task runs one ``dvc exp run -S
seed=$SLURM_ARRAY_TASK_ID`` (docs/replication.md). ``--collect`` reads the finished
experiments from ``dvc exp show --json`` (run here, or a saved file with ``--from-json``), or, with
``--from-runs``, finished runs in folders of their own (e.g. clones that each ran ``ddmbench repro`` with
another ``seed``: no DVC queue, no interpreter per stage).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from scipy import stats

from ddmbench.analysis.stats import holm, t_interval
from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import ensure_writable, write_json
from ddmbench.pipeline.paths import Paths
from ddmbench.report.summary import contrast_entries
from ddmbench.tools.ablations import exp_show, run_params

CONTRAST_FILE = "metrics/contrast.json"
SAMPLING = "sampling uncertainty given these trained models: each seed's ci95, from its own contrast stage"
TRAINING = ("across training seeds: Student-t interval of the mean over the R seeds' estimates (R >= 3), and the "
            "one-sample t test's p: a declared primary's unadjusted, the secondaries' Holm-adjusted")


@dataclass
class ExperimentRecord:
    """One finished pipeline: its DVC experiment, params.yaml, metrics/contrast.json and the evaluator
    digests found in its metrics files."""

    name: str
    rev: str
    params: dict[str, Any]
    contrast: dict[str, Any]
    digests: set[str] = field(default_factory=set)

    @property
    def seed(self) -> int:
        return int(self.params["seed"])


def parse_seeds(given: list[str]) -> list[int]:
    """``--seeds 0,1,2`` (or repeated) -> [0, 1, 2]; one-line ConfigError on anything else or a repeat."""
    try:
        seeds = [int(s) for g in given for s in g.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--seeds: expected integers such as --seeds 0,1,2, got {' '.join(given)!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: give distinct non-negative seeds, e.g. --seeds 0,1,2 (got {seeds})")
    return seeds


def queue_commands(seeds: list[int], jobs: int, data_root: str | None = None) -> list[list[str]]:
    """The DVC commands that queue one experiment per seed and start ``jobs`` workers. Queued experiments
    run in a temporary copy of the repo without the git-ignored data folder, so a relative ``data.root``
    is passed as ``data_root`` (absolute; the same for every seed)."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    data = ["-S", f"data.root={data_root}"] if data_root else []
    return [*(["dvc", "exp", "run", "--queue", "-S", f"seed={s}", *data] for s in seeds),
            ["dvc", "queue", "start", "--jobs", str(jobs)]]


def launch(root: Path, commands: list[list[str]], env: dict[str, str] | None = None) -> None:
    """Run each DVC command in ``root`` (with ``env`` added to the environment, which the queue's workers
    inherit); the first failure stops with its last line of output."""
    if shutil.which("dvc") is None:
        raise ArtifactError("dvc is not installed; `pip install dvc`, or run the commands on a machine that has it")
    for cmd in commands:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False,
                              env={**os.environ, **(env or {})})
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ArtifactError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {last[0]}")
        console.print(f"ran `{' '.join(cmd)}`")


def _digests(metrics: Mapping[str, Any]) -> set[str]:
    """The ``evaluator_sha256`` values that an experiment's metrics files record (the evaluator's identity;
    hand-compared here because ddmbench.evaluation has no identity check on this branch yet)."""
    return {str(f["data"]["evaluator_sha256"]) for f in metrics.values()
            if isinstance(f, Mapping) and isinstance(f.get("data"), Mapping) and f["data"].get("evaluator_sha256")}


def records_from_exp_show(states: list[dict[str, Any]]) -> tuple[list[ExperimentRecord], dict[str, int]]:
    """Finished experiments from ``dvc exp show --json`` and a count of the others by state (queued,
    running, failed)."""
    records, other = [], {}
    for baseline in states:
        for exp in baseline.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state", "success")
            head = (exp.get("revs") or [{}])[0]
            data = head.get("data") or {}
            if state != "success" or not data:
                other[state] = other.get(state, 0) + 1
                continue
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            contrast = ((data.get("metrics") or {}).get(CONTRAST_FILE) or {}).get("data")
            name = exp.get("name") or head.get("name") or head.get("rev", "?")[:7]
            if "seed" not in params or contrast is None:
                raise ArtifactError(f"experiment {name} has no params.yaml seed or no {CONTRAST_FILE}; re-run it "
                                    "with `dvc exp run -S seed=<s>` through the contrast stage")
            records.append(ExperimentRecord(name, head.get("rev", ""), params, contrast, _digests(data.get("metrics", {}))))
    return records, other


def records_from_runs(roots: list[Path]) -> list[ExperimentRecord]:
    """One record per finished run folder: its params.yaml, metrics/contrast.json and the evaluator digests in
    its metrics/**/*.json files; the folder's path is the record's name."""
    import json

    records = []
    for root in roots:
        params, contrast_file = run_params(root), root / CONTRAST_FILE
        if not contrast_file.is_file():
            raise ArtifactError(f"{contrast_file} is missing: --from-runs takes folders of finished runs (params.yaml "
                                "and metrics/ after `ddmbench repro` through the contrast stage)")
        try:
            metrics = {str(f): {"data": json.loads(f.read_text())} for f in sorted((root / "metrics").rglob("*.json"))}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{root}: unreadable metrics file ({exc}); re-run that run") from exc
        if "seed" not in params:
            raise ArtifactError(f"{root / 'params.yaml'} has no seed; replicate runs of one profile that differ in seed")
        records.append(ExperimentRecord(str(root), "", params, metrics[str(contrast_file)]["data"],
                                        _digests(metrics)))
    return records


def check_records(records: list[ExperimentRecord], seeds: list[int]) -> list[ExperimentRecord]:
    """The record of each requested seed, checked: one per seed, params equal apart from ``seed``, one
    evaluator digest across all of them (else a one-line error naming both)."""
    by_seed: dict[int, list[ExperimentRecord]] = {}
    for r in records:
        by_seed.setdefault(r.seed, []).append(r)
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise ArtifactError(f"no finished experiment for seed(s) {missing}; run `ddmbench replicate --run --seeds "
                            f"{','.join(map(str, missing))}` (or check `dvc queue status`)")
    twice = {s: [r.name for r in by_seed[s]] for s in seeds if len(by_seed[s]) > 1}
    if twice:
        raise ArtifactError(f"several experiments per seed {twice}; keep one (`dvc exp remove <name>`)")
    chosen = [by_seed[s][0] for s in seeds]
    base = {k: v for k, v in chosen[0].params.items() if k != "seed"}
    for r in chosen[1:]:
        other = {k: v for k, v in r.params.items() if k != "seed"}
        if other != base:
            key = next(k for k in sorted(set(base) | set(other)) if base.get(k) != other.get(k))
            raise ArtifactError(f"experiments {chosen[0].name} and {r.name} differ in params key '{key}', not only in "
                                "seed; replicate the same params.yaml")
    for r in chosen:
        if len(r.digests) > 1:
            raise ArtifactError(f"experiment {r.name} mixes evaluator digests {sorted(r.digests)}; re-run it")
    known = [r for r in chosen if r.digests]
    for r in known[1:]:
        if r.digests != known[0].digests:
            raise ArtifactError(f"evaluator digests differ: {known[0].name} {min(known[0].digests)} vs {r.name} "
                                f"{min(r.digests)}; seeds must be scored in one feature space (evaluator.seed)")
    if known and len(known) != len(chosen):
        raise ArtifactError("some experiments record no evaluator digest: "
                            f"{[r.name for r in chosen if not r.digests]}; re-run them with this ddmbench")
    return chosen


def declared_pairs(cfg: Config) -> list[tuple[str, str]]:
    """(policy, metric) of every declared primary hypothesis (``report.primary``)."""
    return [(h.policy, m) for h in cfg.report.primary for m in h.metrics]


def headline(cfg: Config, entries: Mapping[tuple[str, str], Any]) -> list[tuple[str, str]]:
    """The declared primaries, then FID, KID and convergence error of the same policies where contrast.json
    has them; top-2's when nothing is declared."""
    policies = list(dict.fromkeys(h.policy for h in cfg.report.primary)) or ["top-2"]
    declared = declared_pairs(cfg)
    extra = [(p, m) for p in policies for m in ("fid", "kid", "convergence_error") if (p, m) in entries]
    return list(dict.fromkeys(declared + extra))


def aggregate(records: list[ExperimentRecord], pairs: list[tuple[str, str]], level: float = 0.95,
              primary: Collection[tuple[str, str]] = ()) -> dict[str, Any]:
    """Per headline (policy, metric): each seed's estimate with its within-run ci95 (sampling) and the
    between-seed mean, sd, t-interval (None below R = 3), sign agreement and, from R = 3, the one-sample t
    test's two-sided p-value of mean 0 (training). ``primary``: the declared pairs, judged on their own p;
    the rest are secondary, Holm-adjusted together (``p_adjusted``, as the contrast summary does)."""
    per_record = [contrast_entries(r.contrast) for r in records]
    out = []
    for policy, metric in pairs:
        seeds = []
        for r, entries in zip(records, per_record):
            e = entries.get((policy, metric))
            if e is None or e.get("estimate") is None:
                raise ArtifactError(f"experiment {r.name} (seed {r.seed}) has no {policy} − full estimate in {metric} "
                                    f"in {CONTRAST_FILE}; re-run its contrast stage")
            seeds.append({"seed": r.seed, "experiment": r.name, "estimate": float(e["estimate"]),
                          "ci95": e.get("ci95"), "p_value": e.get("p_value")})
        values = np.array([s["estimate"] for s in seeds])
        positive, negative = int((values > 0).sum()), int((values < 0).sum())
        out.append({"policy": policy, "versus": "full", "metric": metric, "per_seed": seeds,
                    "between_seeds": {"r": len(values), "mean": float(values.mean()),
                                      "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                                      "ci95": list(t_interval(values, level)) if len(values) >= 3 else None,
                                      "estimand": "mean over training seeds of the paired difference",
                                      "n_positive": positive, "n_negative": negative,
                                      "agree_in_sign": max(positive, negative),
                                      "p_value": _t_test_p(values) if len(values) >= 3 else None}})
    _adjust(out, set(primary))
    return {"seeds": [r.seed for r in records], "experiments": [{"seed": r.seed, "name": r.name, "rev": r.rev}
                                                                for r in records],
            "evaluator_sha256": min(records[0].digests) if records and records[0].digests else None,
            "uncertainty": {"sampling": SAMPLING, "training": TRAINING}, "contrasts": out}


def _t_test_p(values: np.ndarray) -> float:
    """Two-sided p of the one-sample t test of mean 0 (scipy.stats.ttest_1samp); 0 or 1 where all values agree."""
    if np.all(values == values[0]):
        return 1.0 if values[0] == 0 else 0.0
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def _adjust(contrasts: list[dict[str, Any]], primary: set[tuple[str, str]]) -> None:
    """Adds family and p_adjusted to each contrast's between_seeds: a primary keeps its p, the secondaries with
    a p are Holm-adjusted as one family."""
    secondary = [c["between_seeds"] for c in contrasts
                 if (c["policy"], c["metric"]) not in primary and c["between_seeds"]["p_value"] is not None]
    adjusted = dict(zip(map(id, secondary), holm([b["p_value"] for b in secondary]))) if secondary else {}
    for c in contrasts:
        b = c["between_seeds"]
        b["family"] = "primary" if (c["policy"], c["metric"]) in primary else "secondary"
        b["p_adjusted"] = b["p_value"] if b["family"] == "primary" else adjusted.get(id(b))


def collect(cfg: Config, paths: Paths, seeds: list[int], doc: list[dict[str, Any]] | None = None,
            runs: list[Path] | None = None, out: Path | None = None) -> dict[str, Any]:
    """Aggregate the finished experiments of ``seeds`` (from ``runs``, folders of finished runs; ``doc``, a
    saved ``dvc exp show --json``; or from running it here); writes ``out`` (default reports/replicate.json,
    relative to the repo root), prints a table."""
    out_path = paths.root / out if out is not None else paths.reports / "replicate.json"
    ensure_writable(out_path)
    if runs:
        records, other = records_from_runs(runs), {}
    else:
        records, other = records_from_exp_show(doc if doc is not None else exp_show(paths.root))
    chosen = check_records(records, seeds)
    first = contrast_entries(chosen[0].contrast)
    result = aggregate(chosen, headline(cfg, first), primary=declared_pairs(cfg))
    result["not_finished"] = other
    write_json(out_path, result)
    show(result)
    console.print(f"wrote {out_path.relative_to(paths.root) if out_path.is_relative_to(paths.root) else out_path}")
    return result


def show(result: dict[str, Any]) -> None:
    t = Table(title=f"policy − full across training seeds {result['seeds']} (between-seed 95% t-interval)")
    for h in ("policy − full", "metric", "per seed", "mean [95% t-interval]", "p (family, adjusted)",
              "seeds agreeing in sign"):
        t.add_column(h, justify="left" if h in ("policy − full", "metric") else "right")
    for c in result["contrasts"]:
        b = c["between_seeds"]
        ci = "n/a (R < 3)" if b["ci95"] is None else f"[{b['ci95'][0]:+.3g}, {b['ci95'][1]:+.3g}]"
        t.add_row(c["policy"], c["metric"], ", ".join(f"{s['estimate']:+.3g}" for s in c["per_seed"]),
                  f"{b['mean']:+.3g} {ci}", _p_text(b), f"{b['agree_in_sign']} of {b['r']}")
    console.print(t)
    console.print(f"{result['uncertainty']['sampling']}; {result['uncertainty']['training']}.")


def _p_text(b: dict[str, Any]) -> str:
    if b.get("p_adjusted") is None:
        return "n/a (R < 3)"
    return f"{b['p_adjusted']:.3g} ({b['family']}{', Holm' if b['family'] == 'secondary' else ''})"
