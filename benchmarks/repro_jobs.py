"""`ddmbench repro --jobs 1` against `--jobs N` on one profile, side by side on this machine.

Exports HEAD twice (``git archive``, without the published run), runs the profile's whole pipeline in each
copy, one after the other (``--jobs 1`` first), and reports the two wall times, their ratio, and how far the
two runs' metrics differ on the gate's terms (``gate_power.drift_stats``: a worker runs with threads / N
intra-op threads, so the difference is the thread-count drift and nothing else). Writes
reports/repro-jobs.json. Run it on a quiet machine; it is a benchmark, not a test:

    python benchmarks/repro_jobs.py --profile params/ci.yaml --data-root data --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_power import drift_stats, export_head, head_archive, head_commit, run_profile  # noqa: E402

from ddmbench.hardware import machine_fingerprint  # noqa: E402
from ddmbench.io import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--profile", type=Path, default=Path("params/ci.yaml"))
    ap.add_argument("--data-root", type=Path, default=Path("data"), help="raw datasets (data.root of the copies)")
    ap.add_argument("--jobs", type=int, default=2, help="processes of the parallel run")
    ap.add_argument("--timeout-min", type=float, default=120.0, help="per run")
    ap.add_argument("--out", type=Path, default=Path("reports/repro-jobs.json"))
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="repro-jobs-"))
    archive, commit, seconds = head_archive(args.repo), head_commit(args.repo), {}  # the commit the runs use
    try:
        for jobs in (1, args.jobs):
            copy = scratch / f"jobs-{jobs}"
            export_head(archive, copy)
            start = time.monotonic()
            ok, tail = run_profile(copy, args.repo / args.profile, args.data_root, args.timeout_min * 60, jobs=jobs)
            seconds[jobs] = time.monotonic() - start
            if not ok:
                print(f"the --jobs {jobs} run failed: {tail}")
                return 1
            print(f"--jobs {jobs}: {seconds[jobs]:.0f} s", flush=True)
        drift = drift_stats(scratch / "jobs-1" / "metrics", scratch / f"jobs-{args.jobs}" / "metrics")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"profile": str(args.profile), "commit": commit, "machine": machine_fingerprint(),
              "threads": torch.get_num_threads(), "jobs": args.jobs,
              "wall_s": {"jobs_1": seconds[1], f"jobs_{args.jobs}": seconds[args.jobs]},
              "speedup": seconds[1] / seconds[args.jobs], "metrics_vs_jobs_1": drift}
    write_json(args.repo / args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
