"""Where the analyze stage's time goes: each of its passes timed on its own for a few policies of a finished
run (the run's trained models; nothing under outputs/ or metrics/ is written).

    cd <a finished run> && python <repo>/benchmarks/analysis_cost.py --policy full --policy top-2 \\
        --save reports/analysis-cost.json

Passes, as ``ddmbench/pipeline/analyze.py`` runs them on the first ``analysis.n`` seeds: the traced pass with
the routing-jump probe, the Lipschitz power iteration (``analysis.power_iterations`` jvp + vjp at every solver
grid state), the amplification (one sampler pass per eps), the convergence ladder and reference
(``reference_factor`` x NFE), and the p* alignment over the training set. ``--lipschitz-batches 250,64,32``
times only the Lipschitz pass at several rows per jvp/vjp call instead. The process keeps glibc's freed memory
as ``ddmbench`` does (``ddmbench.allocator``); ``DDMBENCH_MALLOC=default`` measures glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ddmbench.allocator import keep_freed_memory
from ddmbench.analysis.convergence import convergence
from ddmbench.analysis.stability import RoutingJump, amplification, lipschitz_along
from ddmbench.config import load_config
from ddmbench.pipeline.artifacts import oracle_clusters, sample_seeds, sampling_device
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import build_policy_field, empirical_posterior
from ddmbench.sampling.observers import States
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.solvers import EVALS_PER_STEP


def passes(params: Path, policy: str) -> dict[str, float]:
    """Seconds of each analyze pass for one policy."""
    cfg, paths = load_config(params), Paths(Path.cwd())
    a, s = cfg.analysis, cfg.sample
    spec = parse_policy(policy)
    seeds = sample_seeds(cfg)[:a.n]
    device = sampling_device(cfg)
    field = build_policy_field(cfg, paths, spec, device)
    kw: dict[str, Any] = {"solver": s.solver, "batch_size": s.batch_size, "device": device,
                          "cluster": oracle_clusters(cfg, paths, spec, seeds)}
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        return out

    states, jump = States(), RoutingJump(field, a.jump_delta)
    base = timed("traced pass + routing jump", lambda: generate(field, seeds, nfe_steps=s.nfe_steps,
                                                                 observers=[states, jump], **kw).images)
    t_all, xs, ws = states.result()
    grid = list(range(0, len(t_all), EVALS_PER_STEP[s.solver]))
    timed(f"Lipschitz ({a.power_iterations} jvp + vjp)", lambda: lipschitz_along(
        field, xs[:, grid], t_all[grid], ws[:, grid], torch.tensor(seeds), iterations=a.power_iterations,
        batch_size=s.batch_size, device=device))
    timed(f"amplification ({len(a.eps)} passes)", lambda: amplification(field, seeds, a.eps, nfe_steps=s.nfe_steps,
                                                                          base=base, **kw))
    timed(f"convergence (reference {a.reference_factor} x NFE + ladder)", lambda: convergence(
        field, seeds, nfe_steps=s.nfe_steps, reference_factor=a.reference_factor, rungs=a.ladder_rungs,
        at_nfe=base, **kw))
    post = timed("p* set-up", lambda: empirical_posterior(cfg, paths))
    x, t = xs[:, grid].flatten(0, 1), t_all[grid].repeat(len(seeds))
    timed("p* at the grid states", lambda: [post(xb, tb) for xb, tb in zip(x.split(256), t.split(256))])
    return seconds


def lipschitz_batches(params: Path, policy: str, batches: list[int], seeds_n: int) -> dict[str, Any]:
    """Seconds of the Lipschitz pass on the first ``seeds_n`` seeds at each rows-per-call in ``batches`` (the
    stage uses sample.batch_size), and whether the values are bit-identical to the first batch size's."""
    cfg, paths = load_config(params), Paths(Path.cwd())
    spec, seeds = parse_policy(policy), sample_seeds(cfg)[:seeds_n]
    field = build_policy_field(cfg, paths, spec, sampling_device(cfg))
    states = States()
    generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, solver=cfg.sample.solver, batch_size=cfg.sample.batch_size,
             observers=[states], cluster=oracle_clusters(cfg, paths, spec, seeds))
    t, xs, ws = states.result()
    out, seconds = {}, {}
    for b in batches:
        start = time.perf_counter()
        out[b] = lipschitz_along(field, xs, t, ws, torch.tensor(seeds), iterations=cfg.analysis.power_iterations,
                                 batch_size=b)
        seconds[b] = round(time.perf_counter() - start, 2)
    first = out[batches[0]]
    return {"states": int(first.numel()), "seconds": seconds,
            "bit_identical_to_first": {b: bool(torch.equal(out[b], first)) for b in batches},
            "max_relative_difference": {b: float(((out[b] - first).abs() / first).max()) for b in batches}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--lipschitz-batches", help="e.g. 250,64,32: time only the Lipschitz pass at these rows per call")
    p.add_argument("--seeds", type=int, default=16, help="seeds for --lipschitz-batches")
    p.add_argument("--save", type=Path)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the `ddmbench` command does for the analyze stage
    if args.lipschitz_batches:
        batches = [int(b) for b in args.lipschitz_batches.split(",")]
        result = {policy: lipschitz_batches(args.params, policy, batches, args.seeds) for policy in args.policy}
        for policy, r in result.items():
            print(f"{policy} ({r['states']} states): " + ", ".join(
                f"{b} rows {s:.1f} s{'' if r['bit_identical_to_first'][b] else ' (values differ)'}"
                for b, s in r["seconds"].items()))
    else:
        result = {policy: passes(args.params, policy) for policy in args.policy}
        for policy, sec in result.items():
            total = sum(sec.values())
            print(f"{policy}: " + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in sec.items()))
    if args.save:
        args.save.write_text(json.dumps({"threads": torch.get_num_threads(), "policies": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
