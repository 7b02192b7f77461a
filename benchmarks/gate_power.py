"""The regression gate's power, measured: plant one known fault at a time and see whether `compare` fails.

For each mutation (a literal source edit that must match exactly once, so the suite breaks loudly when the
code moves): export HEAD into a temporary folder (``git archive``), apply the edit, run the CI profile there
(``git init``, ``ddmbench repro`` with that copy's code on PYTHONPATH) and check its metrics against the baseline
with this checkout's (unmutated) gate. A first run without any mutation is the control: it must come back
``exact`` or ``drift``, else the baseline is stale and no row means anything. Results go to
reports/baseline/gate-power.json and to the table between the markers in docs/regression-gate.md.

Runs by hand or on a schedule, never in CI (one CI-profile run per mutation):

    python benchmarks/gate_power.py [--data-root data] [--only top-k-smallest] [--timeout-min 90] [--append]
    python benchmarks/gate_power.py --drift      # the float drift of 1 vs 2 threads on the profile
    python benchmarks/gate_power.py --drift-runs RUN_1T/metrics RUN_2T/metrics   # the same, from finished runs
    python benchmarks/gate_power.py --false-alarms REFERENCE/metrics RUN... [--out FILE]   # clean runs judged as another machine

``--false-alarms`` measures the other side of the gate: how often a clean run made on another machine fails.
Each RUN (another training seed's metrics folder, or a committed baseline of another float path) is held out in
turn and judged, as another machine, against a baseline made from REFERENCE with the spread of all the other
runs; it writes reports/baseline/false-alarms.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import read_json, write_json, write_text
from ddmbench.tools import float_paths, regression
from ddmbench.tools import spread as spread_tool

START, END = "<!-- gate-power:start -->", "<!-- gate-power:end -->"


@dataclass(frozen=True)
class Mutation:
    """A planted fault: replace ``old`` (which must occur exactly once in ``path``) by ``new``."""

    name: str
    layer: str
    path: str
    old: str
    new: str
    what: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("top-k-smallest", "policy", "ddmbench/sampling/policies.py",
             "idx = p.topk(min(k, p.shape[1]), dim=1).indices  # (B, k)",
             "idx = p.topk(min(k, p.shape[1]), dim=1, largest=False).indices  # (B, k)",
             "top-k keeps the k smallest router probabilities"),
    Mutation("euler-sign-half-grid", "solver", "ddmbench/sampling/solvers.py",
             "x = x + (t_next - t) * v            # step along it",
             "x = x + (t_next - t) * (v if 2 * i < len(ts) - 1 else -v)  # step along it",
             "Euler steps against the velocity on the second half of the time grid"),
    Mutation("ema-disabled", "training", "ddmbench/train/modules.py",
             "return d * averaged + (1.0 - d) * current",
             "return current",
             "the EMA copy just follows the trained weights"),
    Mutation("amplification-fresh-routing", "analysis", "ddmbench/analysis/stability.py",
             "moved = generate(field, seeds, noise=z + e * u, **kw).images",
             "moved = generate(field, [s + 1_000_003 for s in seeds], noise=z + e * u, **kw).images",
             "the perturbed run draws fresh routing randomness instead of replaying the unperturbed run's"),
    Mutation("router-shifted-labels", "router", "ddmbench/train/modules.py",
             "loss = nn.functional.cross_entropy(logits, cluster)",
             "loss = nn.functional.cross_entropy(logits, cluster.roll(1, 0))",
             "the router is trained against the cluster of the neighbouring image in the batch"),
    Mutation("evaluator-mirrored-features", "evaluator", "ddmbench/evaluation/features.py",
             "return torch.cat([classifier.features(chunk.float()) for chunk in images.split(batch)])",
             "return torch.cat([classifier.features(chunk.float().flip(-1)) for chunk in images.split(batch)])",
             "the evaluator embeds left-right mirrored images"),
    Mutation("convergence-mse-not-rms", "analysis", "ddmbench/analysis/convergence.py",
             "per_seed[n] = ((x0 - reference).flatten(1).pow(2).mean(1)).sqrt()   # (N,) RMS per pixel",
             "per_seed[n] = ((x0 - reference).flatten(1).pow(2).mean(1))   # (N,) RMS per pixel",
             "the convergence error is the mean square, not its root"),
)


def apply(root: Path, m: Mutation) -> None:
    """Edit ``root / m.path`` in place; ConfigError naming the mutation unless ``m.old`` occurs exactly once."""
    path = root / m.path
    text = path.read_text() if path.exists() else ""
    count = text.count(m.old)
    if count != 1:
        raise ConfigError(f"mutation {m.name}: {m.path} holds its target text {count} times (expected once); "
                          "the code moved: update MUTATIONS in benchmarks/gate_power.py")
    path.write_text(text.replace(m.old, m.new))


def head_archive(repo: Path) -> bytes:
    """``git archive HEAD`` of ``repo``: taken once, so the control and every mutation run the same commit
    even if HEAD moves while the suite runs."""
    return subprocess.run(["git", "-C", str(repo), "archive", "HEAD"], check=True, capture_output=True).stdout


# The committed default-profile run (reports/README.md), removed from every export as .ci/run does:
# a run of another profile there would otherwise leave that run's files for its unlisted policies beside its own.
PUBLISHED_RUN = ("dvc.lock", "metrics", "reports/plots", "reports/report.md")


def export_head(archive: bytes, dest: Path) -> None:
    """A ``head_archive`` into ``dest``, as its own git repository (DVC needs one), without the published run."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for path in PUBLISHED_RUN:
        target = dest / path
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    git = ["git", "-c", "user.email=gate-power@localhost", "-c", "user.name=gate-power"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "gate-power copy"], cwd=dest, check=True)


def repro(copy: Path, params: dict[str, Any], *, timeout_s: float, threads: int | None = None, jobs: int = 1,
          log: Path | None = None) -> tuple[bool, list[str]]:
    """Write ``params`` as ``copy``/params.yaml and run ``ddmbench --quiet repro --jobs N`` (``dvc repro`` in one
    process) there with the copy's own code (``threads``: OMP_NUM_THREADS, which sets torch's intra-op threads).
    Every output line goes to ``log`` as it comes, prefixed with the seconds since the start (a stage's wall
    time is the gap to the next stage's line). A watchdog kills a run past ``timeout_s``, also one that hangs
    silently. Returns (finished with exit 0, the last five lines of output)."""
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(copy), "DVC_NO_ANALYTICS": "1",
           **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    start, lines = time.monotonic(), []
    with (log.open("w") if log is not None else open(os.devnull, "w")) as sink, subprocess.Popen(
            [sys.executable, "-m", "ddmbench", "--quiet", "repro", "--jobs", str(jobs)], cwd=copy, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(f"[{time.monotonic() - start:7.1f}s] {line}")
            sink.flush()
            lines = [*lines[-4:], line.rstrip()]
        code = proc.wait()
        watchdog.cancel()
    if time.monotonic() - start >= timeout_s:
        return False, [f"timed out after {timeout_s:.0f} s"]
    return code == 0, lines


def run_profile(copy: Path, profile: Path, data_root: Path, timeout_s: float,
                threads: int | None = None, jobs: int = 1) -> tuple[bool, str]:
    """:func:`repro` of the profile file ``profile`` with ``data.root`` = ``data_root``; (finished, last lines)."""
    params = yaml.safe_load(profile.read_text())
    params["data"]["root"] = str(data_root.resolve())
    ok, tail = repro(copy, params, timeout_s=timeout_s, threads=threads, jobs=jobs)
    return ok, "\n".join(tail)


# How a run is judged "as another machine": a float path no baseline was made on, so `compare` gates the
# contrasts alone, at the tolerances and signs measured across training seeds and float paths.
ANOTHER_MACHINE = {"vendor": "another vendor"}


def judge(metrics: Path, baseline: dict[str, Any], mode: str, ranges: dict[str, float] | None = None) -> dict[str, Any]:
    """``compare``'s findings for one mode: 'same path' (determinism and contrasts) or 'other machine'. With
    ``ranges`` (each contrast's range over the cross-path spread): the contrasts the run moved by more than that
    range, and those of them the gate let pass (``missed_beyond_spread``)."""
    try:
        result = regression.compare(metrics, baseline, **(ANOTHER_MACHINE if mode == "other machine" else {}))
    except ArtifactError as exc:  # e.g. a fault that changes the evaluator's weights: compare refuses the run
        return {"verdict": "refused", "caught": True, "failing_contrasts": [], "values_beyond_drift": None,
                "largest_move": None, "beyond_spread": [], "missed_beyond_spread": [], "detail": str(exc)}
    moves = [abs(r.current - r.baseline) / r.tolerance for r in result.contrasts if r.current is not None and r.tolerance]
    beyond = [r for r in result.contrasts if ranges and r.name in ranges and r.current is not None
              and abs(r.current - r.baseline) > ranges[r.name]]
    return {"verdict": result.verdict, "caught": result.verdict == "regression",
            "failing_contrasts": [f"{r.name} ({r.why})" for r in result.failed_contrasts],
            "values_beyond_drift": len(result.beyond) if result.values_gated else None,
            "largest_move": round(max(moves), 3) if moves else None,
            "beyond_spread": [r.name for r in beyond], "missed_beyond_spread": [r.name for r in beyond if r.passed],
            "detail": result.summary()}


def row_for(m: Mutation | None, metrics: Path | None, baseline: dict[str, Any], failure: str = "",
            ranges: dict[str, float] | None = None) -> dict[str, Any]:
    """One table row: what the gate said about the run in both modes (or that the pipeline itself failed).
    ``largest_move``: the largest |Δ contrast| over its tolerance in that mode (above 1 a contrast fails)."""
    row: dict[str, Any] = {"mutation": m.name if m else "none (control)", "layer": m.layer if m else "",
                           "what": m.what if m else "HEAD as committed"}
    if metrics is None:
        failed = {"verdict": "pipeline failed", "caught": m is not None, "failing_contrasts": [],
                  "values_beyond_drift": None, "largest_move": None, "beyond_spread": [],
                  "missed_beyond_spread": [], "detail": failure}
        return {**row, **failed, "other_machine": failed}
    return {**row, **judge(metrics, baseline, "same path"),
            "other_machine": judge(metrics, baseline, "other machine", ranges)}


def spread_ranges(path: Path) -> dict[str, float] | None:
    """{headline contrast: its range over the cross-path spread} of a `ddmbench spread` file, if there is one."""
    if not path.is_file():
        return None
    doc = read_json(path, "ddmbench spread ... --out FILE")
    return {name.removeprefix("contrast "): float(m["range"]) for name, m in doc["metrics"].items()
            if m.get("kind") == "contrast"}


def drift_stats(first: Path, second: Path) -> dict[str, Any]:
    """How far two same-seed runs' metrics folders differ, on the gate's terms: values bit-identical, the
    largest |Δ| / sibling scale (what ``--drift-rel`` must cover), and ``compare``'s line for the second run
    against a baseline made from the first."""
    a, b = regression.flatten_metrics(first), regression.flatten_metrics(second)
    common = sorted(k for k in a if k in b and regression.kind_of(k) == "value")
    scales = regression.sibling_scales({k: a[k] for k in common})
    ratios = {k: abs(a[k] - b[k]) / scales[k] if scales[k] else float(a[k] != b[k]) for k in common}
    worst = max(ratios, key=ratios.__getitem__) if ratios else None
    base = regression.make_baseline(first, why="drift", git_commit="", profile="")
    try:
        verdict = regression.compare(second, base).summary()
    except ArtifactError as exc:  # e.g. the two runs trained evaluators with different weights
        verdict = f"refused: {exc}"
    return {"values": len(common), "bit_identical": sum(a[k] == b[k] for k in common),
            "max_delta_over_scale": ratios[worst] if worst else 0.0, "worst": worst, "compare": verdict}


def false_alarms(reference: Path, runs: dict[str, Path]) -> dict[str, Any]:
    """Each of ``runs`` held out in turn and judged as a clean run from another machine: against a baseline made
    from ``reference`` whose other-path tolerances come from the spread of ``reference`` and the other runs.
    A failing contrast here is a false alarm: nothing is wrong with the held-out run."""
    rows = []
    for held, path in runs.items():
        rest = {"reference": reference, **{k: v for k, v in runs.items() if k != held}}
        base = regression.make_baseline(reference, why="held out", git_commit="", profile="",
                                        spread=spread_tool.spread(rest))
        numbers = spread_tool.run_numbers(path)
        judged = [regression.ContrastRow(name, e["value"], numbers.get(f"contrast {name}"),
                                         e["other_path"]["tolerance"], e["other_path"]["sign"])
                  for name, e in sorted(base["contrasts"].items())]
        rows.append({"held_out": held, "contrasts": len(judged),
                     "guarded_signs": sum(1 for r in judged if r.sign),
                     "failing": [f"{r.name} ({r.why})" for r in judged if not r.passed]})
    return {"reference": str(reference), "runs": {k: str(v) for k, v in runs.items()}, "rows": rows,
            "checked": sum(r["contrasts"] for r in rows), "false_alarms": sum(len(r["failing"]) for r in rows)}


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The table written between the markers: mutation -> what caught it on the same float path (determinism and
    contrasts) and as another machine (contrasts alone, cross-path tolerances)."""
    lines = [header, "", "| mutation | layer | commit | same path: verdict | contrasts failing | values beyond drift | "
             "other machine: verdict | contrasts failing | largest move / tolerance | moved beyond the spread, "
             "passed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = r.get("other_machine") or {}
        beyond = "—" if r["values_beyond_drift"] is None else str(r["values_beyond_drift"])
        move = "—" if other.get("largest_move") is None else f"{other['largest_move']:g}"
        missed = f"{len(other.get('missed_beyond_spread', []))} of {len(other.get('beyond_spread', []))}"
        lines.append(f"| `{r['mutation']}`: {r['what']} | {r['layer']} | {r.get('commit', '?')} | {r['verdict']} | "
                     f"{'; '.join(r['failing_contrasts']) or 'none'} | {beyond} | {other.get('verdict', 'not run')} | "
                     f"{'; '.join(other.get('failing_contrasts', [])) or 'none'} | {move} | {missed} |")
    return "\n".join(lines)


def write_table(readme: Path, table: str) -> None:
    """Put ``table`` between the gate-power markers of ``readme`` (appended with the markers if absent)."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    write_text(readme, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--profile", type=Path, default=Path("params/ci.yaml"))
    ap.add_argument("--baseline", type=Path, default=None,
                    help="default reports/baseline/ci-<this CPU's vendor>-<vector ISA>.json (the control must reproduce it)")
    ap.add_argument("--data-root", type=Path, default=Path("data"), help="raw datasets (data.root of the copies)")
    ap.add_argument("--spread", type=Path, default=Path("reports/baseline/spread-ci.json"),
                    help="the cross-path spread the baseline's tolerances came from (for 'moved beyond the spread')")
    ap.add_argument("--only", action="append", choices=[m.name for m in MUTATIONS], help="run only these")
    ap.add_argument("--timeout-min", type=float, default=90.0, help="per CI-profile run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of gate-power.json for mutations not run now (each row names its commit)")
    ap.add_argument("--drift", action="store_true",
                    help="instead: run HEAD twice, 1 and 2 threads, and measure the float drift (drift.json)")
    ap.add_argument("--drift-runs", type=Path, nargs=2, metavar=("ONE_THREAD", "TWO_THREADS"),
                    help="instead: the drift between two finished same-seed runs' metrics folders (drift.json)")
    ap.add_argument("--false-alarms", type=Path, nargs="+", metavar="RUN",
                    help="instead: REFERENCE then other runs (metrics folders or baseline files), each held out and "
                         "judged as another machine (false-alarms.json)")
    ap.add_argument("--out", type=Path, default=Path("reports/baseline/false-alarms.json"),
                    help="with --false-alarms: the JSON to write, under --repo")
    args = ap.parse_args(argv)
    if args.false_alarms:
        if len(args.false_alarms) < 3:
            ap.error("--false-alarms needs REFERENCE and at least 2 other runs")
        reference, *others = args.false_alarms
        result = false_alarms(reference, {str(p): p for p in others})
        write_json(args.repo / args.out, result)
        print(json.dumps({k: result[k] for k in ("checked", "false_alarms")}), flush=True)
        for row in result["rows"]:
            print(f"{row['held_out']}: {len(row['failing'])} of {row['contrasts']} contrasts fail"
                  + (f" ({'; '.join(row['failing'])})" if row["failing"] else ""))
        return 1 if result["false_alarms"] else 0
    if args.drift_runs:
        return write_drift(args, drift_stats(*args.drift_runs))
    if args.drift:
        return measure_drift(args)
    args.baseline = args.baseline or Path("reports/baseline") / float_paths.baseline_name(float_paths.this_path())
    baseline = regression.check_baseline(read_json(args.baseline, "ddmbench baseline --why '...'"), args.baseline)
    ranges = spread_ranges(args.repo / args.spread)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    archive, commit = head_archive(args.repo), head_commit(args.repo)
    out = args.repo / "reports/baseline/gate-power.json"
    previous = read_json(out, "python benchmarks/gate_power.py")["rows"] if args.append and out.exists() else []
    header = (f"Measured with `python benchmarks/gate_power.py` ({args.profile}, baseline {args.baseline}); "
              "each row names the commit it ran, after a control run of that commit; caught = `compare` says "
              "regression.")

    def save(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """gate-power.json and the docs' table, rewritten after every run (a stopped suite keeps its rows)."""
        done = {r["mutation"] for r in rows}
        merged = [r for r in previous if r["mutation"] not in done] + rows
        write_json(out, {"commit": commit, "rows": merged})
        write_table(args.repo / "docs/regression-gate.md", markdown(merged, header))
        return merged

    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="gate-power-"))
    try:
        for m in [None, *chosen]:
            copy = scratch / (m.name if m else "control")
            export_head(archive, copy)
            if m is not None:
                apply(copy, m)
            t0 = time.time()
            ok, tail = run_profile(copy, args.repo / args.profile, args.data_root, args.timeout_min * 60)
            rows.append(row_for(m, copy / "metrics" if ok else None, baseline, tail, ranges))
            rows[-1].update(minutes=round((time.time() - t0) / 60, 1), commit=commit)
            print(f"{rows[-1]['mutation']}: {rows[-1]['verdict']} ({rows[-1]['minutes']} min)", flush=True)
            if m is None and (rows[0]["verdict"] not in ("exact", "drift")
                              or rows[0]["other_machine"]["verdict"] != "other-machine"):
                print(f"control run is '{rows[0]['verdict']}' ('{rows[0]['other_machine']['verdict']}' as another "
                      f"machine): refresh the baseline first ({rows[0]['detail']})")
                return 1
            save(rows)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = save(rows)
    missed = [r["mutation"] for r in rows if r["mutation"] != "none (control)" and not r["caught"]]
    missed_other = [r["mutation"] for r in rows if r["mutation"] != "none (control)" and not r["other_machine"]["caught"]]
    if missed_other:
        print(f"as another machine, not caught: {', '.join(missed_other)}")
    print("every mutation caught" if not missed else f"not caught: {', '.join(missed)}")
    return 1 if missed else 0


def head_commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def measure_drift(args: argparse.Namespace) -> int:
    """Two same-seed runs of the profile at HEAD, 1 and 2 threads; writes reports/baseline/drift.json."""
    scratch = Path(tempfile.mkdtemp(prefix="gate-drift-"))
    archive = head_archive(args.repo)
    try:
        for threads in (1, 2):
            copy = scratch / f"threads-{threads}"
            export_head(archive, copy)
            ok, tail = run_profile(copy, args.repo / args.profile, args.data_root, args.timeout_min * 60, threads)
            if not ok:
                print(f"the {threads}-thread run failed: {tail}")
                return 1
        stats = drift_stats(scratch / "threads-1" / "metrics", scratch / "threads-2" / "metrics")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return write_drift(args, stats)


def write_drift(args: argparse.Namespace, stats: dict[str, Any]) -> int:
    """reports/baseline/drift.json: the 1- vs 2-thread drift of ``args.profile``'s same-seed runs."""
    write_json(args.repo / "reports/baseline/drift.json", {"profile": str(args.profile), "threads": [1, 2], **stats})
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
