"""glibc's malloc defaults against ``ddmbench.allocator.keep_freed_memory``, side by side in one run.

    python benchmarks/allocator.py --save reports/allocator.json

Each workload runs in a fresh child process (the thresholds hold for a whole process), once with
``DDMBENCH_MALLOC=default`` and once without, alternating over ``--rounds`` rounds so that a noisy neighbour
hits both alike. A child times its workload (median of its repeats after a warm-up) and hashes what it
computed, so the run also shows whether the results stay bit for bit the same. Workloads (random weights,
seed 0): an expert training step (unet-xs, batch 128, at 1 thread as in ``repro --jobs 2`` and at 2 threads),
the expert forward at the sampling chunk (64 rows) and at 250 rows, and the Lipschitz power iteration of the
full policy (K = 4 unet-xs experts and a router, 250 states in one call, 2 iterations).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKLOADS = {"train unet-xs b128, 1 thread": ("train", 1), "train unet-xs b128, 2 threads": ("train", 2),
             "forward unet-xs 64 rows": ("forward64", 2), "forward unet-xs 250 rows": ("forward250", 2),
             "lipschitz full K=4, 250 states": ("lipschitz", 2)}


def child(kind: str, threads: int, repeats: int) -> dict[str, Any]:
    from ddmbench.allocator import keep_freed_memory

    applied = keep_freed_memory()
    import torch

    from ddmbench.analysis.stability import local_lipschitz
    from ddmbench.models import nets
    from ddmbench.sampling.field import RoutedField
    from ddmbench.sampling.policies import parse_policy
    from ddmbench.tools.roofline import _forward, _train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "train":
        net = nets.build_velocity_net("unet-xs").train()
        step = _train_step(net, 128, (1, 28, 28), "fp32", "cpu")

        def result() -> torch.Tensor:
            return torch.cat([p.flatten() for p in net.parameters()])
    elif kind.startswith("forward"):
        net = nets.build_velocity_net("unet-xs").eval().requires_grad_(False)
        call = _forward(net, int(kind.removeprefix("forward")), (1, 28, 28), "fp32", "cpu")
        step, result = call, call
    else:
        experts = [nets.build_velocity_net("unet-xs").eval().requires_grad_(False) for _ in range(4)]  # as loaded
        field = RoutedField(experts, nets.build_router("router-s", 4).eval().requires_grad_(False), parse_policy("full"))
        x, t = torch.randn(250, 1, 28, 28), torch.rand(250)
        with torch.no_grad():
            w = field.weights(field.probabilities(x, t), t, None)

        def step() -> torch.Tensor:
            return local_lipschitz(field, x, t, w, torch.arange(250), iterations=2)
        result = step
    step()
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
    digest = hashlib.sha256(result().detach().numpy().tobytes()).hexdigest()[:16]
    return {"seconds": statistics.median(walls), "digest": digest, "applied": applied}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeats)))
        return
    settings = {"glibc defaults": "default", "keep_freed_memory": ""}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {s: [] for s in settings} for w in WORKLOADS}
    for r in range(args.rounds):
        for name, (kind, threads) in WORKLOADS.items():
            for setting, env in settings.items():
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(threads), "--repeats",
                                      str(args.repeats)], env={**os.environ, "DDMBENCH_MALLOC": env},
                                     capture_output=True, text=True, check=True)
                runs[name][setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
    doc: dict[str, Any] = {"rounds": args.rounds, "repeats": args.repeats, "workloads": {}}
    for name, by_setting in runs.items():
        ms = {s: [1e3 * c["seconds"] for c in cs] for s, cs in by_setting.items()}
        digests = {c["digest"] for cs in by_setting.values() for c in cs}
        row = {"ms": ms, "median_ms": {s: statistics.median(v) for s, v in ms.items()},
               "speedup": statistics.median(a / b for a, b in zip(ms["glibc defaults"], ms["keep_freed_memory"])),
               "bit_identical": len(digests) == 1,
               "applied": [c["applied"] for c in by_setting["keep_freed_memory"]]}
        doc["workloads"][name] = row
        print(f"{name:34s} {row['median_ms']['glibc defaults']:8.1f} ms -> {row['median_ms']['keep_freed_memory']:8.1f} ms"
              f"  {row['speedup']:.2f}x  bit-identical {row['bit_identical']}")
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
