"""Where the analyze stage's time goes: each of its passes timed on its own for a few policies of a finished
run (the run's trained models; nothing under outputs/ or metrics/ is written).

    cd <a finished run> && python <repo>/benchmarks/analysis_cost.py --policy full --policy top-2 \\
        --save reports/analysis-cost.json

Passes, as ``ddmbench/pipeline/analyze.py`` runs them on the first ``analysis.n`` seeds: the traced pass with
the routing-jump probe, the Lipschitz power iteration (``analysis.power_iterations`` iterations at every solver
grid state), the amplification (one sampler pass per eps), the convergence ladder and reference
(``reference_factor`` x NFE), and the p* alignment over the training set. ``--lipschitz-batches 250,64,32``
times only the Lipschitz pass at several rows per call instead. ``--lipschitz-methods
forward@250,reverse@250,forward@32,reverse@32`` times the Lipschitz pass by method and rows per call, each
in a fresh child process (so its peak RSS is its own), alternating over ``--rounds`` rounds: ``reverse`` is
the stage's ``local_lipschitz`` (reverse over reverse), ``forward`` the torch.func jvp + vjp form it replaced,
kept below as the reference. The process keeps glibc's freed memory as ``ddmbench`` does
(``ddmbench.allocator``); ``DDMBENCH_MALLOC=default`` measures glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ddmbench import streams
from ddmbench.allocator import keep_freed_memory
from ddmbench.analysis import stability
from ddmbench.analysis.convergence import convergence
from ddmbench.analysis.stability import RoutingJump, amplification, lipschitz_along
from ddmbench.config import load_config
from ddmbench.pipeline.analyze import lipschitz_rows
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
    timed(f"Lipschitz ({a.power_iterations} iterations)", lambda: lipschitz_along(
        field, xs[:, grid], t_all[grid], ws[:, grid], torch.tensor(seeds), iterations=a.power_iterations,
        batch_size=lipschitz_rows(cfg, device), device=device))
    timed(f"amplification ({len(a.eps)} passes)", lambda: amplification(field, seeds, a.eps, nfe_steps=s.nfe_steps,
                                                                          base=base, **kw))
    timed(f"convergence (reference {a.reference_factor} x NFE + ladder)", lambda: convergence(
        field, seeds, nfe_steps=s.nfe_steps, reference_factor=a.reference_factor, rungs=a.ladder_rungs,
        at_nfe=base, **kw))
    post = timed("p* set-up", lambda: empirical_posterior(cfg, paths))
    x, t = xs[:, grid].flatten(0, 1), t_all[grid].repeat(len(seeds))
    timed("p* at the grid states", lambda: [post(xb, tb) for xb, tb in zip(x.split(256), t.split(256))])
    return seconds


def traced(params: Path, policy: str, seeds_n: int) -> tuple[Any, Any, list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cfg, field, seeds, t (S,), states (n, S, C, H, W), weights (n, S, K)) of one traced sampling pass of
    ``policy`` on the first ``seeds_n`` seeds, every evaluation's state recorded."""
    cfg, paths = load_config(params), Paths(Path.cwd())
    spec, seeds = parse_policy(policy), sample_seeds(cfg)[:seeds_n]
    field = build_policy_field(cfg, paths, spec, sampling_device(cfg))
    states = States()
    generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, solver=cfg.sample.solver, batch_size=cfg.sample.batch_size,
             observers=[states], cluster=oracle_clusters(cfg, paths, spec, seeds))
    return (cfg, field, seeds, *states.result())


def lipschitz_batches(params: Path, policy: str, batches: list[int], seeds_n: int) -> dict[str, Any]:
    """Seconds of the Lipschitz pass on the first ``seeds_n`` seeds at each rows-per-call in ``batches`` (the
    stage uses sample.batch_size), and whether the values are bit-identical to the first batch size's."""
    cfg, field, seeds, t, xs, ws = traced(params, policy, seeds_n)
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


def forward_mode_lipschitz(field: stability.Field, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor,
                           seeds: torch.Tensor, *, iterations: int) -> torch.Tensor:
    """The power iteration as the analyze stage ran it until 2026-12-03: one torch.func jvp (J u) and the
    vjp's pullback (J^T J u) per iteration, same start vectors; the reference ``--lipschitz-methods`` times
    and checks ``stability.local_lipschitz`` against."""
    from torch.func import jvp, vjp

    x = x.detach()
    u = streams.unit_keyed_directions(streams.POWER_START, seeds, t, tuple(x.shape[1:])).to(x)

    def f(y: torch.Tensor) -> torch.Tensor:
        return field.combine(y, t, w)

    with torch.enable_grad():
        _, pullback = vjp(f, x)
        for _ in range(iterations):
            _, ju = jvp(f, (x,), (u,))
            (jtju,) = pullback(ju)
            norm = jtju.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
            u = jtju / norm.clamp_min(1e-30)
    return norm.flatten().sqrt().detach()


def lipschitz_child(params: Path, policy: str, method: str, rows: int, seeds_n: int) -> dict[str, Any]:
    """One Lipschitz pass (``method`` forward | reverse, ``rows`` per call) on the first ``seeds_n`` seeds'
    traced states, in this process: seconds, peak RSS, the values."""
    if method == "forward":
        stability.local_lipschitz = forward_mode_lipschitz  # lipschitz_along looks it up at call time
    elif method != "reverse":
        raise SystemExit(f"--lipschitz-methods: unknown method '{method}' (forward or reverse)")
    cfg, field, seeds, t, xs, ws = traced(params, policy, seeds_n)
    grid = list(range(0, len(t), EVALS_PER_STEP[cfg.sample.solver]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = lipschitz_along(field, xs[:, grid], t[grid], ws[:, grid], torch.tensor(seeds),
                          iterations=cfg.analysis.power_iterations, batch_size=rows)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_gb_before": before / 2**20,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "values": out.flatten().tolist()}


def lipschitz_methods(params: Path, policy: str, configs: list[str], seeds_n: int, rounds: int) -> dict[str, Any]:
    """Each ``method@rows`` of ``configs`` in a fresh child per round, alternating; medians, and each config's
    largest relative difference from the first config's values."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for r in range(rounds):
        for config in configs:
            method, _, rows = config.partition("@")
            if not rows.isdigit():
                raise SystemExit(f"--lipschitz-methods: '{config}' is not method@rows (e.g. reverse@32)")
            out = subprocess.run([sys.executable, __file__, "--policy", policy, "--child", method, rows,
                                  "--seeds", str(seeds_n), "--params", str(params),
                                  "--threads", str(torch.get_num_threads())], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{policy} {config}: the child failed: {out.stderr.strip().splitlines()[-1]}")
            runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds}: {policy} {config} {runs[config][-1]['seconds']:.1f} s", file=sys.stderr)
    first = torch.tensor(runs[configs[0]][0]["values"])
    result: dict[str, Any] = {"states": int(first.numel()), "rounds": rounds, "configs": {}}
    for config, cs in runs.items():
        values = torch.tensor(cs[0]["values"])
        result["configs"][config] = {
            "seconds": [round(c["seconds"], 2) for c in cs],
            "median_s": round(statistics.median(c["seconds"] for c in cs), 2),
            "peak_rss_gb": round(max(c["peak_rss_gb"] for c in cs), 2),
            "rss_before_pass_gb": round(max(c["peak_rss_gb_before"] for c in cs), 2),
            "repeatable": all(c["values"] == cs[0]["values"] for c in cs),
            "max_relative_difference_from_first": float(((values - first).abs() / first).max())}
    base = result["configs"][configs[0]]["median_s"]
    for row in result["configs"].values():
        row["speedup_over_first"] = round(base / row["median_s"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--lipschitz-batches", help="e.g. 250,64,32: time only the Lipschitz pass at these rows per call")
    p.add_argument("--lipschitz-methods", help="e.g. forward@250,reverse@32: method@rows, each in a fresh child")
    p.add_argument("--rounds", type=int, default=3, help="rounds for --lipschitz-methods")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's; 1 as in `repro --jobs 2`)")
    p.add_argument("--seeds", type=int, default=16, help="seeds for --lipschitz-batches and --lipschitz-methods")
    p.add_argument("--save", type=Path)
    p.add_argument("--child", nargs=2, metavar=("METHOD", "ROWS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the `ddmbench` command does for the analyze stage
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        method, rows = args.child
        print(json.dumps(lipschitz_child(args.params, args.policy[0], method, int(rows), args.seeds)))
        return 0
    if args.lipschitz_methods:
        configs = args.lipschitz_methods.split(",")
        result = {policy: lipschitz_methods(args.params, policy, configs, args.seeds, args.rounds)
                  for policy in args.policy}
        for policy, r in result.items():
            print(f"{policy} ({r['states']} states, {torch.get_num_threads()} threads):")
            for config, row in r["configs"].items():
                print(f"  {config:14s} {row['median_s']:7.1f} s  {row['speedup_over_first']:.2f}x  peak RSS "
                      f"{row['peak_rss_gb']:.2f} GB  max rel. diff. {row['max_relative_difference_from_first']:.1e}")
    elif args.lipschitz_batches:
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
