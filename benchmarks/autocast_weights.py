"""bf16 sampling forwards: plain autocast (every linear and convolution weight cast at every call) against
:class:`ddmbench.models.precision.Autocast` (those weights cast once, when the network is wrapped), side by
side in one run at the sampling chunk size, with the outputs compared bit for bit.

    python benchmarks/autocast_weights.py --save reports/autocast-weights.json

Each round times every (net, variant) once, as the median of ``--repeats`` calls, interleaved so that a noisy
neighbour hits both variants alike; the ratio is the median over rounds of plain / wrapped. Random weights
(N(0, 0.05)): the zero-initialised DiT layers would otherwise skip no work but compute zeros.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from ddmbench.models import nets
from ddmbench.models.precision import Autocast
from ddmbench.tools.roofline import count_flops, matmul_peak, median_seconds


def measure(presets: list[str], rows: int, rounds: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    peak = matmul_peak("bf16")
    out: dict[str, Any] = {"rows": rows, "rounds": rounds, "repeats": repeats, "threads": torch.get_num_threads(),
                           "bf16_peak_gflops_per_s": peak, "nets": {}}
    calls = {}
    for preset in presets:
        net = nets.build_velocity_net(preset).eval()
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.05)
        x, t = torch.randn(rows, 1, 28, 28), torch.rand(rows)
        wrapped = Autocast(net)

        @torch.no_grad()
        def plain(net: torch.nn.Module = net, x: torch.Tensor = x, t: torch.Tensor = t) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x, t).float()

        @torch.no_grad()
        def cast_once(wrapped: Autocast = wrapped, x: torch.Tensor = x, t: torch.Tensor = t) -> torch.Tensor:
            return wrapped(x, t)
        calls[preset] = {"plain autocast": plain, "weights cast once": cast_once}
        out["nets"][preset] = {"gflop": count_flops(plain) / 1e9, "bit_identical": bool(torch.equal(plain(), cast_once())),
                               "ms": {v: [] for v in calls[preset]}}
    for r in range(rounds):
        for preset, variants in calls.items():
            for variant, fn in variants.items():
                out["nets"][preset]["ms"][variant].append(median_seconds(fn, repeats, warmup=2) * 1e3)
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
    for preset, row in out["nets"].items():
        ms = row["ms"]
        row["ratio_plain_over_cast_once"] = statistics.median(a / b for a, b in zip(ms["plain autocast"],
                                                                                   ms["weights cast once"]))
        row["fraction_of_bf16_peak"] = {v: row["gflop"] / (statistics.median(m) / 1e3) / peak for v, m in ms.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", action="append", help="velocity-net preset (repeatable; default unet-xs, unet-s, dit-xs)")
    parser.add_argument("--rows", type=int, default=64, help="rows per forward (the sampling chunk)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    doc = measure(args.net or ["unet-xs", "unet-s", "dit-xs"], args.rows, args.rounds, args.repeats)
    for preset, row in doc["nets"].items():
        frac = row["fraction_of_bf16_peak"]
        print(f"{preset:8s} plain/cast-once {row['ratio_plain_over_cast_once']:.2f}x  bit-identical {row['bit_identical']}  "
              f"of bf16 peak: {frac['plain autocast']:.1%} -> {frac['weights cast once']:.1%}")
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
