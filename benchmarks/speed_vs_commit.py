"""Issue 16's side-by-side: one pipeline run per (commit, profile, command), each in a fresh clone with a fresh
venv, timed line by line, then the stage groups' wall times of every run in one table.

    python benchmarks/speed_vs_commit.py run --commit c70887f --label c70887f --out runs/speed -- dvc repro
    python benchmarks/speed_vs_commit.py run --commit HEAD --profile params/speed-k4.yaml --label head \\
        --out runs/speed -- ddmbench repro --jobs 2
    python benchmarks/speed_vs_commit.py collect --out runs/speed --baseline c70887f \\
        --save reports/speed-vs-c70887f.json

``run`` clones this repository at ``--commit`` into ``<out>/<label>/repo``, makes a venv there and installs the
package (not timed), copies the raw dataset files from ``--data`` (so no run waits on a download), writes
``--profile`` (a file of the current checkout) over the clone's params.yaml if given (``--set key=value``
overrides single params), and runs the command in
the clone with every output line prefixed by the seconds since the start (``<out>/<label>.log``). Run them one
after the other on a quiet machine: the times are only comparable when nothing else shares the cores.

``collect`` reads each log's stage starts (``dvc repro``'s "Running stage 'X':", ``ddmbench repro``'s
"X: ... running" and "X@*: N stale stages in P processes") and gives a stage group the time from its first
start to the next group's start (so DVC's own bookkeeping between stages counts to the group before it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("prepare, evaluator, clustering, features, router",
     ("prepare", "train-evaluator", "cluster", "features", "train-router")),
    ("experts", ("train-expert",)),
    ("monolith", ("train-monolith",)),
    ("sampling", ("sample",)),
    ("evaluation", ("evaluate",)),
    ("expert accuracy, router calibration", ("expert-accuracy", "router-calibration")),
    ("trajectory analyses", ("analyze",)),
    ("contrast, report", ("contrast", "report")),
]
START = [re.compile(r"Running stage '([^']+)'"),                 # dvc repro
         re.compile(r"^([\w.@*-]+): (?:not in dvc\.lock yet|.*changed|.*stale stages in|.*running)")]  # ddmbench repro
STAMP = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")
TOTAL = re.compile(r"^(?:== exit (\d+) after ([\d.]+) s|rc=(\d+) total=([\d.]+))$")   # this script's, or a shell loop's


def group_of(stage: str) -> str | None:
    base = stage.split("@")[0]
    return next((name for name, stages in GROUPS if base in stages), None)


def stage_starts(log: Path) -> tuple[list[tuple[float, str]], float, int]:
    """(seconds, group) of each group change in ``log``, the total seconds and the exit code."""
    starts: list[tuple[float, str]] = []
    total, code, last = float("nan"), -1, 0.0
    for line in log.read_text(errors="replace").splitlines():
        if m := TOTAL.match(line):
            code, total = int(m.group(1) or m.group(3)), float(m.group(2) or m.group(4))
            continue
        if not (m := STAMP.match(line)):
            continue
        seconds, text = float(m.group(1)), m.group(2)
        last = seconds
        for pattern in START:
            if (s := pattern.search(text)) and (group := group_of(s.group(1))) is not None:
                if not starts or starts[-1][1] != group:
                    starts.append((seconds, group))
                break
    return starts, total if total == total else last, code      # no trailer (killed): up to the last line


def group_seconds(log: Path) -> dict[str, Any]:
    """{"groups_s": {group: seconds}, "total_s", "exit"} of one timed log."""
    starts, total, code = stage_starts(log)
    groups: dict[str, float] = {}
    for (s, g), nxt in zip(starts, [*(t for t, _ in starts[1:]), total]):
        groups[g] = round(groups.get(g, 0.0) + nxt - s, 1)
    if starts:
        groups = {"start-up": round(starts[0][0], 1), **groups}
    return {"groups_s": groups, "total_s": round(total, 1), "exit": code}


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Run ``cmd``; every output line goes to ``log`` prefixed with the seconds since the start."""
    start = time.monotonic()
    with log.open("w") as sink, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(f"[{time.monotonic() - start:8.1f}s] {line}")
            sink.flush()
        code = proc.wait()
        sink.write(f"== exit {code} after {time.monotonic() - start:.1f} s\n")
    return code


def run(args: argparse.Namespace) -> int:
    work = args.out / args.label / "repo"
    if work.exists():
        print(f"{work} exists: remove it or pick another --label", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=work, check=True)
    if args.profile is not None:
        shutil.copyfile(args.profile, work / "params.yaml")
    if args.set:
        params = yaml.safe_load((work / "params.yaml").read_text())
        for item in args.set:
            key, _, value = item.partition("=")
            *parents, leaf = key.split(".")
            node = params
            for k in parents:
                node = node[k]
            node[leaf] = yaml.safe_load(value)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = work / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in sorted(args.data.glob("*-ubyte")):
        shutil.copyfile(f, raw / f.name)
    venv = work / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", "."], cwd=work, check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    (args.out / f"{args.label}.json").write_text(json.dumps(
        {"commit": commit, "profile": str(args.profile) if args.profile else "the commit's params.yaml",
         "set": args.set, "command": args.command}, indent=1))
    return timed(args.command, work, env, args.out / f"{args.label}.log")


def collect(args: argparse.Namespace) -> int:
    runs = {}
    for log in sorted(args.out.glob("*.log")):
        meta = json.loads(log.with_suffix(".json").read_text()) if log.with_suffix(".json").exists() else {}
        runs[log.stem] = {**meta, **group_seconds(log)}
    if args.baseline not in runs:
        print(f"no {args.baseline}.log in {args.out}", file=sys.stderr)
        return 2
    base = runs[args.baseline]["total_s"]
    for r in runs.values():
        r["fraction_of_baseline"] = round(r["total_s"] / base, 3)
    names = ["start-up", *(g for g, _ in GROUPS)]
    print("| stage group | " + " | ".join(f"{k}, min" for k in runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for g in names:
        print(f"| {g} | " + " | ".join(f"{r['groups_s'].get(g, 0) / 60:.1f}" for r in runs.values()) + " |")
    print("| **total** | " + " | ".join(f"**{r['total_s'] / 60:.1f}** ({r['fraction_of_baseline']:.0%})"
                                        for r in runs.values()) + " |")
    if args.save:
        args.save.write_text(json.dumps({"baseline": args.baseline, "runs": runs, **({"machine": args.machine}
                                                                                     if args.machine else {})},
                                        indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="one timed pipeline run in a fresh clone")
    r.add_argument("--commit", required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--profile", type=Path, help="params file of this checkout to run (default: the commit's own)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param of the profile (dotted key, YAML value), e.g. trainer.precision=bf16-mixed")
    r.add_argument("--data", type=Path, default=REPO / "data" / "MNIST" / "raw", help="raw MNIST idx files")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("command", nargs="+", help="after --: the pipeline command, e.g. dvc repro")
    c = sub.add_parser("collect", help="the stage groups' times of every run in --out")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--baseline", required=True, help="label of the run the others are a fraction of")
    c.add_argument("--save", type=Path)
    c.add_argument("--machine", help="what the runs ran on, saved with them")
    args = p.parse_args(argv)
    return run(args) if args.what == "run" else collect(args)


if __name__ == "__main__":
    raise SystemExit(main())
