"""Commands around the pipeline: bench, bench-train, compare, baseline, spread, show-config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ddmbench.cli.app import (
    ParamsOption,
    app,
    context,
    guard,
)
from ddmbench.console import console, err_console
from ddmbench.errors import ConfigError

DATASET_OPTION_HELP = "Dataset whose image shape the nets are built for (mnist, fashion-mnist: 1x28x28; cifar10: 3x32x32)."


def _bench_image_shape(dataset: str) -> tuple[int, int, int]:
    """--dataset -> its image shape (C, H, W); one-line ConfigError naming the choices."""
    from ddmbench.data.datasets import DATASETS

    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset].image_shape


def _check_bench_net_and_device(net: str, device: str) -> None:
    """--net must be a velocity-net preset and --device one this machine has (one-line ConfigError)."""
    import torch

    from ddmbench.config import NET_PRESETS

    if net not in NET_PRESETS:
        raise ConfigError(f"--net: unknown preset '{net}'; choose one of {', '.join(NET_PRESETS)}")
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ConfigError(f"--device: '{device}' is not available here; use cpu" + (" or cuda" if
                          torch.cuda.is_available() else ""))


@app.command()
def bench(experts: Annotated[int, typer.Option(help="Number of experts K.", min=1)] = 8,
          net: Annotated[str, typer.Option(help="Velocity-net preset (unet-xs|s|m, dit-xs|s).")] = "unet-s",
          batch: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 256,
          nfe_steps: Annotated[int, typer.Option(help="Euler steps per timed pass.", min=1)] = 4,
          repeats: Annotated[int, typer.Option(help="Interleaved repeats (median is used).", min=1)] = 3,
          memory_n: Annotated[int, typer.Option(help="Images for the peak-memory run (0 = skip).", min=0)] = 10_000,
          device: Annotated[str, typer.Option(help="cpu or cuda (memory is measured on the CPU only).")] = "cpu",
          chunk_rows: Annotated[Optional[int], typer.Option(
              help="Largest rows per model call (sample.chunk_rows); default 64 on cpu, 0 (whole dispatch) on cuda.",
              min=0)] = None,
          dataset: Annotated[str, typer.Option(help=DATASET_OPTION_HELP)] = "mnist",
          out: Annotated[Path, typer.Option(help="Where to save the JSON results (runs/ is git-ignored).")] = Path(
              "runs/bench.json"),
          roofline: Annotated[bool, typer.Option(help="Also measure the matmul peaks (fp32, bf16) and every hot "
                                                 "path's GFLOP/s against them.")] = True,
          ) -> None:
    """Sampling wall-time ratios of routing policies (Top-k vs Full vs monolith), peak memory, and the roofline."""

    def body() -> None:
        import torch
        from rich.table import Table

        from ddmbench.io import write_json
        from ddmbench.tools import bench as b

        _check_bench_net_and_device(net, device)
        shape = _bench_image_shape(dataset)
        if experts < 2:
            raise ConfigError("--experts: the ratios need at least 2 experts")
        chunk = chunk_rows if chunk_rows is not None else (b.DEFAULT_CHUNK_ROWS if device == "cpu" else 0)
        with err_console.status("timing policies") as status:
            timing = b.time_policies(experts, net, batch, nfe_steps, repeats, progress=status.update, device=device,
                                     chunk_rows=chunk, image_shape=shape)
        memory = (b.measure_memory(experts, net, memory_n, batch, chunk_rows=chunk, image_shape=shape)
                  if memory_n and device == "cpu" else None)
        peaks = None
        if roofline:
            from ddmbench.evaluation.cost import flops_per_image
            from ddmbench.models import nets
            from ddmbench.tools import roofline as rl

            with err_console.status("roofline") as status:
                peaks = rl.roofline(repeats=repeats, device=device, image_shape=shape, chunk_rows=chunk or 64,
                                    progress=status.update)
            expert_gflop = flops_per_image(nets.build_velocity_net(net, shape), image_shape=shape) / 1e9
            router_gflop = flops_per_image(b.BenchRouter(experts, 0, shape), image_shape=shape) / 1e9
            peaks["rows"] += [{**r, "rows": batch, "ms": timing["median_s"][r["path"].removeprefix("sampling ")] * 1e3}
                              for r in rl.sampling_rows(timing, expert_gflop, router_gflop, peaks["peak_gflops_per_s"])]
        result = {"setup": {"experts": experts, "net": net, "batch": batch, "nfe_steps": nfe_steps,
                            "repeats": repeats, "solver": "euler", "device": device, "chunk_rows": chunk,
                            "torch_threads": torch.get_num_threads(), "dataset": dataset,
                            "image_shape": list(shape)},
                  **timing, "memory": memory, "roofline": peaks}
        write_json(out, result)
        table = Table(title=f"sampling cost, K={experts} {net} experts, batch {batch}, Euler x{nfe_steps}")
        for col in ("ratio", "measured", "target", "pass"):
            table.add_column(col, justify="left" if col == "ratio" else "right")
        for r in timing["ratios"]:
            table.add_row(r["ratio"], f"{r['value']:.3f}", f"≤ {r['target']:.2f}", "yes" if r["pass"] else "[red]NO[/]")
        if memory:
            table.add_row(f"peak RSS sampling {memory['n']} images ({memory['policy']}, traces off)",
                          f"{memory['peak_rss_gib']:.2f} GiB", f"≤ {memory['target_gib']:.0f} GiB",
                          "yes" if memory["pass"] else "[red]NO[/]")
        console.print(table)
        console.print("median wall per pass (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timing["median_s"].items()))
        if peaks:
            _print_roofline(peaks)
        console.print(f"wrote {out}")

    guard(body)


def _print_roofline(peaks: dict[str, Any]) -> None:
    from rich.table import Table

    peak = peaks["peak_gflops_per_s"]
    native = "native" if peaks["bf16_native"] else "emulated: no AVX512-BF16/AMX, so ddmbench refuses bf16 here"
    table = Table(title=f"roofline on {peaks['device']} ({peaks['threads']} threads): matmul {peaks['matmul_size']}² "
                        f"peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s ({native})")
    for col in ("hot path", "dtype", "rows", "ms/call", "GFLOP/call", "GFLOP/s", "of fp32 peak", "of bf16 peak"):
        table.add_column(col, justify="left" if col == "hot path" else "right")
    for r in peaks["rows"]:
        table.add_row(r["path"], r["dtype"], str(r["rows"]), f"{r['ms']:.1f}", f"{r['gflop']:.3f}",
                      f"{r['gflops_per_s']:.1f}", f"{r['fraction_of_fp32_peak']:.0%}", f"{r['fraction_of_bf16_peak']:.0%}")
    console.print(table)


@app.command("bench-train")
def bench_train(net: Annotated[str, typer.Option(help="Velocity-net preset (unet-xs|s|m, dit-xs|s).")] = "unet-xs",
                batch: Annotated[int, typer.Option(help="Images per optimizer step.", min=1)] = 128,
                steps: Annotated[int, typer.Option(help="Timed optimizer steps per run.", min=1)] = 40,
                warmup: Annotated[int, typer.Option(help="Untimed steps before timing starts.", min=1)] = 5,
                repeats: Annotated[int, typer.Option(help="Interleaved repeats per path (median is used).", min=1)] = 5,
                device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
                precision: Annotated[str, typer.Option(help="32-true or bf16-mixed.")] = "32-true",
                compile: Annotated[bool, typer.Option("--compile", help="torch.compile the net in both paths.")] = False,
                dataset: Annotated[str, typer.Option(help=DATASET_OPTION_HELP)] = "mnist",
                out: Annotated[Path, typer.Option(help="Where to save the JSON results (runs/ is git-ignored).")] = Path(
                    "runs/bench-train.json"),
                ) -> None:
    """Training throughput of one expert: our Lightning fit path vs a plain PyTorch loop (target ratio >= 0.95)."""

    def body() -> None:
        from rich.table import Table

        from ddmbench.io import write_json
        from ddmbench.tools.bench_train import time_training

        _check_bench_net_and_device(net, device)
        shape = _bench_image_shape(dataset)
        if precision not in ("32-true", "bf16-mixed"):
            raise ConfigError(f"--precision: '{precision}' is not supported here; use 32-true or bf16-mixed")
        if compile and device != "cuda":
            raise ConfigError("--compile: torch.compile is timed on GPUs only; add --device cuda or drop --compile")
        with err_console.status("timing training") as status:
            result = time_training(net, batch, steps, warmup, repeats, device=device, precision=precision,
                                   compile=compile, progress=status.update, image_shape=shape)
        table = Table(title=f"training throughput: {net}, batch {batch}, {device}, {precision}"
                            f"{', compiled' if compile else ''} (median of {repeats} interleaved runs)")
        for col in ("path", "steps/s (median)", "min", "max", "images/s"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name in ("plain", "lightning"):
            runs = result["steps_per_s"][name]
            table.add_row(name, f"{result['median_steps_per_s'][name]:.2f}", f"{min(runs):.2f}", f"{max(runs):.2f}",
                          f"{result['images_per_s'][name]:.0f}")
        console.print(table)
        verdict = "meets" if result["ratio"] >= result["target"] else "misses"
        console.print(f"Lightning / plain = {result['ratio']:.3f} ({verdict} the target >= {result['target']})")
        write_json(out, result)
        console.print(f"saved {out}")

    guard(body)


@app.command()
def compare(current: Annotated[Path, typer.Argument(help="Metrics folder of the run to check.")] = Path("metrics"),
            baselines: Annotated[Optional[list[Path]], typer.Argument(
                help="Baseline JSON files, or folders of them (one per float path: the one made on this CPU's vendor, "
                     "vector ISA and thread count is used); default: reports/baseline/.")] = None,
            failures_only: Annotated[bool, typer.Option(
                help="List only what fails: failing contrasts, and values beyond drift only where gated.")] = False,
            this_path_only: Annotated[bool, typer.Option(
                help="Gate only against a baseline made on this CPU's float path; without one, say so and pass (for "
                     "a baseline whose other-path tolerances no spread over training seeds has measured).")] = False
            ) -> None:
    """Gate a run against the baseline: (a) same-seed determinism, exact or within float drift; (b) the headline
    paired contrasts keep their sign and tolerance. Ends in one line: exact / drift / other-machine (no baseline
    from this CPU's float path: (b) alone; exit 0) or regression (exit 1)."""
    from rich.table import Table

    from ddmbench.io import read_json
    from ddmbench.tools import float_paths, regression

    def body() -> int:
        regression.flatten_metrics(current)   # the run's folder first: its error is the likelier one
        found: dict[str, dict] = {}
        for given in baselines or [Path("reports/baseline")]:
            files = sorted(given.glob("*.json")) if given.is_dir() else [given]
            for path in files:
                doc = read_json(path, "ddmbench baseline --why '...'")
                if given.is_dir() and not (isinstance(doc, dict) and isinstance(doc.get("values"), dict)):
                    continue  # spread, drift and gate-power files live beside the baselines
                found[str(path)] = regression.check_baseline(doc, path)
        baseline, base = float_paths.choose_baseline(found)
        here = float_paths.this_path()
        if this_path_only and not float_paths.same_path(base, here):
            console.print(f"not gated: no baseline in {', '.join(map(str, baselines or ['reports/baseline']))} was made "
                          f"on this float path ({here.vendor} {here.isa}, {here.threads} threads); make one here "
                          "with `ddmbench baseline`",
                          markup=False, highlight=False, soft_wrap=True)
            return 0
        result = regression.compare(current, base)
        table = Table(title=f"headline contrasts: {current} vs {baseline}")
        for col in ("contrast", "baseline", "current", "tolerance", "sign guarded", "pass"):
            table.add_column(col, justify="left" if col == "contrast" else "right")
        for r in result.contrasts:
            if failures_only and r.passed:
                continue
            table.add_row(r.name, f"{r.baseline:+.4g}", "missing" if r.current is None else f"{r.current:+.4g}",
                          f"± {r.tolerance:.3g}", {1: "> 0", -1: "< 0"}.get(r.sign, "no"),
                          "yes" if r.passed else f"[red]NO: {r.why}[/]")
        console.print(table)
        if result.beyond and not (failures_only and result.other_machine and not result.missing):
            values = Table(title=f"values beyond float drift ({len(result.beyond)}; first 20)" +
                           (": not gated, the baseline is from another float path" if result.other_machine else ""))
            for col in ("value", "baseline", "current"):
                values.add_column(col, justify="left" if col == "value" else "right")
            for name, b, c in result.beyond[:20]:
                values.add_row(escape(name), f"{b:.6g}", "missing" if c is None else f"{c:.6g}")
            console.print(values)
        for name, b, c in result.constants_changed[:10]:
            console.print(f"constant {escape(name)}: {b:g} -> {'missing' if c is None else f'{c:g}'}")
        if result.new:
            console.print(f"{len(result.new)} numbers are not in the baseline (not compared), e.g. "
                          f"{escape(', '.join(result.new[:3]))}")
        console.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
        return 1 if result.verdict == "regression" else 0

    code = guard(body)
    if code:
        raise typer.Exit(code)


@app.command()
def baseline(why: Annotated[str, typer.Option(help="Why the baseline changes (recorded in the file; say it in the commit too).")],
             current: Annotated[Path, typer.Option(help="Metrics folder to freeze.")] = Path("metrics"),
             params: ParamsOption = Path("params.yaml"),
             spread_file: Annotated[Optional[Path], typer.Option(
                 "--spread", help="A `ddmbench spread` JSON (runs over training seeds and float paths) whose contrast "
                                  "ranges set the tolerances, those used from another machine above all (default: "
                                  "each contrast's 95% half-width, which another machine's models may exceed).")] = None,
             drift_rel: Annotated[Optional[float], typer.Option(
                 min=0.0, max=0.01, help="Float drift the determinism check allows, as a fraction of each value's "
                                         "scale (default regression.DRIFT_REL; measured: docs/regression-gate.md).")] = None,
             out: Annotated[Optional[Path], typer.Option(
                 help="Baseline file to write (default reports/baseline/ci-<this CPU's vendor>-<ISA>.json).")] = None) -> None:
    """Freeze a run as the regression baseline: its values, its config constants, and its headline contrasts
    with their tolerances and guarded signs."""
    from ddmbench.io import read_json, write_json
    from ddmbench.pipeline.tracking import git_commit
    from ddmbench.tools import float_paths, regression

    def body() -> None:
        if not why.strip():
            raise ConfigError("--why: say why the baseline changes")
        context(params)  # the params must be valid
        spread_doc = read_json(spread_file, "ddmbench spread RUN... --out FILE") if spread_file else None
        result = regression.make_baseline(current, why=why, git_commit=git_commit(Path.cwd()), profile=str(params),
                                          spread=spread_doc,
                                          drift_rel=regression.DRIFT_REL if drift_rel is None else drift_rel)
        target = out or Path("reports/baseline") / float_paths.baseline_name(float_paths.path_of(result))
        write_json(target, result)
        guarded = sum(1 for c in result["contrasts"].values() if c["sign"])
        console.print(f"wrote {target}: {len(result['values'])} values, {len(result['constants'])} constants, "
                      f"{len(result['contrasts'])} headline contrasts ({guarded} with a guarded sign)")
        if spread_doc is None:
            console.print("[yellow]no --spread: from another float path the contrasts are judged by their 95% "
                          "half-widths, which another machine's trained models may exceed; measure the spread with "
                          "`ddmbench spread` and pass it[/]")

    guard(body)


@app.command()
def spread(runs: Annotated[list[Path], typer.Argument(
               help="Runs of one profile (one per training seed or float path): metrics folders, or baseline files "
                    "(the run each froze).")],
           out: Annotated[Path, typer.Option(help="Where to save the JSON.")] = Path("reports/baseline/spread.json"),
           all_metrics: Annotated[bool, typer.Option(
               "--all", help="Also list and save values and constants, not only the headline contrasts.")] = False
           ) -> None:
    """Run-to-run spread (mean, std, min, max, max-min) of the headline contrasts (and with --all of every
    number), with the tolerance `ddmbench baseline --spread` would set from it."""
    from rich.table import Table

    from ddmbench.io import write_json
    from ddmbench.tools import spread as spread_tool

    def body() -> None:
        result = spread_tool.spread({str(d): d for d in runs})
        if not all_metrics:
            result["metrics"] = {n: m for n, m in result["metrics"].items() if m["kind"] == "contrast"}
        write_json(out, result)
        table = Table(title=f"spread over {len(runs)} runs")
        for col in ("number", "kind", "mean", "std", "min", "max", "max-min", "tolerance"):
            table.add_column(col, justify="left" if col in ("number", "kind") else "right", overflow="fold")
        for name, m in result["metrics"].items():
            if not (all_metrics or m["kind"] == "contrast"):
                continue
            table.add_row(escape(name), m["kind"], f"{m['mean']:.6g}", f"{m['std']:.3g}", f"{m['min']:.6g}",
                          f"{m['max']:.6g}", f"{m['range']:.3g}",
                          "" if m["tolerance"] is None else f"± {m['tolerance']:.3g}")
        console.print(table)
        n_contrasts = sum(1 for m in result["metrics"].values() if m["kind"] == "contrast")
        console.print(f"wrote {out}; {n_contrasts} contrasts, {len(result['metrics'])} numbers in every run, "
                      f"{len(result['missing_in_some_runs'])} missing in some")

    guard(body)


@app.command("show-config")
def show_config(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate the params file and print the resolved configuration (defaults filled in)."""
    import yaml

    from ddmbench.config import config_to_dict

    def body() -> None:
        cfg, _ = context(params)
        console.print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), highlight=False, markup=False)

    guard(body)
