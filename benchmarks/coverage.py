"""The coverage table of every quality interval, by the simulation of tests/test_coverage.py (same code, same
seeds), written to reports/coverage.json (cited in docs/statistics.md).

    python benchmarks/coverage.py [--reps 200] [--out reports/coverage.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_coverage import REPS, simulate  # noqa: E402

from ddmbench.io import write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "coverage.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    tables = [simulate(n, reps=args.reps) for n in (300, 1000)]
    write_json(args.out, {"method": "grouped jackknife (ddmbench/evaluation/intervals.py)", "tables": tables,
                          "cpu_s": time.process_time() - start})
    for t in tables:
        print(f"N = {t['n']}:", {k: round(v, 3) for k, v in t["coverage"].items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
