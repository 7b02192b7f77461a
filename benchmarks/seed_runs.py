"""Finished runs of one profile at several training seeds, for ``ddmbench replicate --from-runs``.

``ddmbench replicate --run`` queues the R runs as DVC experiments; this runs them without DVC's queue: it
exports HEAD once (``git archive``) into a working copy and runs ``ddmbench repro`` there for every seed in
turn (DVC's run cache reuses what the seeds share: data, evaluator, real features). After each run its
params.yaml and metrics/ are copied to ``<out>/s<seed>``; a seed whose folder already holds
metrics/contrast.json is skipped, so an interrupted set resumes. Collect:

    python benchmarks/seed_runs.py --profile params/fashion-dit.yaml --data-root data --seeds 0 1 2 --out runs/fashion
    ddmbench replicate --params params/fashion-dit.yaml --seeds 0,1,2 $(ls -d runs/fashion/s* | sed 's/^/--from-runs /')

``run_cells`` is the loop both this and ``ablation_grid.py`` (one cell per K, clustering and seed) run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_power import export_head, head_archive, repro  # noqa: E402


def seeded(profile: dict[str, Any], seed: int, data_root: Path) -> dict[str, Any]:
    """A copy of ``profile`` with ``seed`` and an absolute ``data.root``."""
    params = yaml.safe_load(yaml.safe_dump(profile))
    params["seed"] = seed
    params["data"]["root"] = str(data_root.resolve())
    return params


def run_cells(repo: Path, cells: Iterable[tuple[str, dict[str, Any]]], out: Path, timeout_min: float, *,
              jobs: int = 1, threads: int | None = None) -> int:
    """Run ``ddmbench repro`` once per (name, params) in one export of ``repo``'s HEAD and copy each finished
    run's params.yaml and metrics/ to ``out/<name>``; names already finished there are skipped. Returns the
    number of runs that failed (each is printed with its last lines of output). Each run's output, timed line by
    line, goes to ``out/<name>.log`` (:func:`gate_power.repro`)."""
    work = Path(tempfile.mkdtemp(prefix="ddmbench-runs-")) / "repo"
    export_head(head_archive(repo), work)
    failed = 0
    for name, params in cells:
        dest = out / name
        if (dest / "metrics" / "contrast.json").exists():
            print(f"{name}: done before, skipped", flush=True)
            continue
        start = time.monotonic()
        ok, tail = repro(work, params, timeout_s=timeout_min * 60, threads=threads, jobs=jobs, log=out / f"{name}.log")
        minutes = (time.monotonic() - start) / 60
        if not ok:
            failed += 1
            print(f"{name}: FAILED after {minutes:.1f} min: {' | '.join(tail)}", flush=True)
            continue
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.copy2(work / "params.yaml", dest / "params.yaml")
        shutil.copytree(work / "metrics", dest / "metrics")
        print(f"{name}: {minutes:.1f} min", flush=True)
    shutil.rmtree(work.parent, ignore_errors=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--profile", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data-root", type=Path, default=Path("data"), help="raw datasets (data.root of every run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/seeds"), help="one folder per finished seed")
    ap.add_argument("--timeout-min", type=float, default=120.0, help="per run")
    ap.add_argument("--jobs", type=int, default=1, help="ddmbench repro --jobs (foreach groups in N processes)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every run (default: unset)")
    args = ap.parse_args(argv)
    profile = yaml.safe_load((args.repo / args.profile).read_text())
    cells = ((f"s{seed}", seeded(profile, seed, args.data_root)) for seed in args.seeds)
    return 1 if run_cells(args.repo, cells, args.out, args.timeout_min, jobs=args.jobs, threads=args.threads) else 0


if __name__ == "__main__":
    raise SystemExit(main())
