"""The mechanism ablation grid of params/ablation.yaml, run cell by cell with ``ddmbench repro``.

docs/replication.md's route queues the 18 runs as DVC experiments (a subprocess per stage); this one exports
HEAD once (``git archive``) into a working copy and runs every (K, clustering, seed) there in turn with ``ddmbench
repro`` (one process; DVC's run cache reuses the stages a run shares with the one before: data, evaluator,
real features). After each run its params.yaml and metrics/ are copied to ``<out>/k<K>-<method>-s<seed>``;
a run whose folder already holds metrics/contrast.json is skipped, so an interrupted grid resumes. Collect:

    python benchmarks/ablation_grid.py --data-root data --out runs/ablation
    ddmbench ablations --from-runs runs/ablation/k2-two-stage-s0 ... (or: $(ls -d runs/ablation/* | sed 's/^/--from-runs /'))

The grid (K, clustering methods, seeds) and the compute matching (expert.steps = budget / K) are the ones
the profile's header fixes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_runs import run_cells, seeded  # noqa: E402

KS = (2, 4, 8)
METHODS = ("two-stage", "random")
SEEDS = (0, 1, 2)
EXPERT_STEPS_TOTAL = 600  # params/ablation.yaml's header: every DDM trains 600 expert steps in total


def cell_params(profile: dict[str, Any], k: int, method: str, seed: int, data_root: Path) -> dict[str, Any]:
    """The profile with one cell's K, clustering method, seed and compute-matched expert.steps."""
    params = seeded(profile, seed, data_root)
    params["cluster"]["k"], params["cluster"]["method"] = k, method
    params["experts"] = list(range(k))
    params["expert"]["steps"] = EXPERT_STEPS_TOTAL // k
    return params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--profile", type=Path, default=Path("params/ablation.yaml"))
    ap.add_argument("--data-root", type=Path, default=Path("data"), help="raw datasets (data.root of every run)")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"), help="one folder per finished run")
    ap.add_argument("--k", type=int, action="append", choices=KS, help="only these K (default all)")
    ap.add_argument("--method", action="append", choices=METHODS, help="only these clusterings (default all)")
    ap.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    ap.add_argument("--timeout-min", type=float, default=60.0, help="per run")
    args = ap.parse_args(argv)
    profile = yaml.safe_load((args.repo / args.profile).read_text())
    cells = ((f"k{k}-{method}-s{seed}", cell_params(profile, k, method, seed, args.data_root))
             for seed in args.seeds for k in (args.k or KS) for method in (args.method or METHODS))
    return 1 if run_cells(args.repo, cells, args.out, args.timeout_min) else 0


if __name__ == "__main__":
    raise SystemExit(main())
