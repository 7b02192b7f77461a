"""Commands around the pipeline: bench, bench-train, compare, baseline, ablations, spread, show-config."""

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
          out: Annotated[Path, typer.Option(help="Where to save the JSON results.")] = Path("reports/bench.json"),
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
                out: Annotated[Path, typer.Option(help="Where to save the JSON results.")] = Path("reports/bench-train.json"),
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
            baseline: Annotated[Path, typer.Argument(help="Baseline JSON.")] = Path("reports/baseline/ci.json"),
            failures_only: Annotated[bool, typer.Option(help="List only the failing metrics.")] = False) -> None:
    """Compare a run's metrics with a committed baseline; exit 1 if any metric is out of tolerance."""
    from rich.table import Table

    from ddmbench.io import read_json
    from ddmbench.tools import regression

    def body() -> int:
        flat = regression.flatten_metrics(current)
        base = read_json(baseline, "ddmbench baseline --why '...'")
        rows = regression.compare(flat, base)
        new = regression.ungated(flat, base)
        failed = [r for r in rows if not r.passed]
        table = Table(title=f"{current} vs {baseline}")
        for col in ("metric", "baseline", "current", "delta", "tolerance", "pass"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for r in (failed if failures_only else rows):
            table.add_row(r.metric, f"{r.baseline:.6g}", "missing" if r.current is None else f"{r.current:.6g}",
                          "" if r.delta is None else f"{r.delta:+.4g}", f"± {r.tolerance:.4g}",
                          "yes" if r.passed else "[red]NO[/]")
        console.print(table)
        console.print(f"{len(rows) - len(failed)} of {len(rows)} metrics within tolerance")
        if new:
            no_rule = [n for n in new if regression.rule_for(n) is None]
            console.print(f"{len(new)} metrics are not in the baseline and not gated, e.g. {', '.join(new[:3])}"
                          + (f"; {len(no_rule)} have no rule in regression.TOLERANCES: measure their spread with "
                             "`ddmbench spread` and add one" if no_rule else ""))
        return 1 if failed else 0

    code = guard(body)
    if code:
        raise typer.Exit(code)


@app.command()
def baseline(why: Annotated[str, typer.Option(help="Why the baseline changes (recorded in the file; say it in the commit too).")],
             current: Annotated[Path, typer.Option(help="Metrics folder to freeze.")] = Path("metrics"),
             params: ParamsOption = Path("params.yaml"),
             out: Annotated[Path, typer.Option(help="Baseline file to write.")] = Path("reports/baseline/ci.json")) -> None:
    """Freeze the current metrics (with their tolerances) as the regression baseline."""
    from ddmbench.io import write_json
    from ddmbench.pipeline.tracking import git_commit
    from ddmbench.tools import regression

    def body() -> None:
        if not why.strip():
            raise ConfigError("--why: say why the baseline changes")
        context(params)  # the params must be valid
        result = regression.make_baseline(regression.flatten_metrics(current), why=why,
                                          git_commit=git_commit(Path.cwd()), profile=str(params))
        write_json(out, result)
        console.print(f"wrote {out} ({len(result['metrics'])} metrics)")

    guard(body)


@app.command()
def ablations(from_json: Annotated[Optional[Path], typer.Option(
                  "--from-json", help="A saved `dvc exp show --json` document (default: run it here).")] = None,
              workspace: Annotated[bool, typer.Option(
                  help="Also list this workspace's metrics files as a row (the only row when there is no DVC "
                       "repository or no experiment).")] = False,
              out: Annotated[Path, typer.Option(help="Markdown table to write.")] = Path("reports/ablations.md"),
              params: ParamsOption = Path("params.yaml")) -> None:
    """Collect the DVC experiments' metrics (K, clustering method, FID per policy) into one table."""
    from rich.table import Table

    from ddmbench.io import read_json, write_text
    from ddmbench.tools import ablations as ab

    def body() -> None:
        root, rows, sources = Path.cwd(), [], []
        if from_json or (root / ".dvc").is_dir():
            doc = read_json(from_json, "dvc exp show --json > FILE") if from_json else ab.exp_show(root)
            rows = ab.rows_from_exp_show(doc)
            sources.append(str(from_json) if from_json else "dvc exp show")
        if workspace or not rows:
            cfg, _ = context(params)
            rows.append(ab.row_from_workspace(root, cfg.model_dump(mode="json")))
            sources.append("the workspace")
        source = " and ".join(sources)
        header, cells = ab.table(rows)
        tbl = Table(title=f"ablations ({len(rows)} runs from {source})")
        for col in header:
            tbl.add_column(col, justify="left" if col in ("experiment", "rev", "method", "features") else "right",
                           overflow="fold")
        for row in cells:
            tbl.add_row(*row)
        console.print(tbl)
        write_text(out, ab.markdown(rows, source))
        console.print(f"wrote {out}")

    guard(body)


@app.command()
def spread(runs: Annotated[list[Path], typer.Argument(help="Metrics folders of runs of one profile (e.g. one per seed).")],
           out: Annotated[Path, typer.Option(help="Where to save the JSON.")] = Path("reports/baseline/spread.json"),
           all_metrics: Annotated[bool, typer.Option("--all", help="Also list metrics a rule marks as not compared.")] = False
           ) -> None:
    """Run-to-run spread (mean, std, min, max, max-min) of every metric, next to the tolerance that gates it."""
    from rich.table import Table

    from ddmbench.io import write_json
    from ddmbench.tools import regression

    def body() -> None:
        result = regression.spread({str(d): regression.flatten_metrics(d) for d in runs})
        write_json(out, result)
        table = Table(title=f"spread over {len(runs)} runs")
        for col in ("metric", "mean", "std", "min", "max", "max-min", "tolerance", "tol/range"):
            table.add_column(col, justify="left" if col == "metric" else "right", overflow="fold")
        for name, m in result["metrics"].items():
            if not (all_metrics or m["gated"] or m["rule"] is None):
                continue  # timings and other metrics a rule marks "not compared"
            ratio = m["tol_over_range"]
            tol = ("no rule" if m["rule"] is None else "not gated") if m["tolerance"] is None else f"± {m['tolerance']:.4g}"
            table.add_row(name, f"{m['mean']:.6g}", f"{m['std']:.3g}", f"{m['min']:.6g}", f"{m['max']:.6g}",
                          f"{m['range']:.3g}", tol, "" if ratio is None else
                          (f"{ratio:.2f}" if ratio >= 1 else f"[red]{ratio:.2f}[/]"))
        console.print(table)
        rules = Table(title=f"per rule: widest spread, and {result['multiple']:g} x it (how TOLERANCES are set)")
        for col in ("rule", "n", "abs_tol", "rel_tol", "range", "range/|mean|", "suggested abs", "suggested rel"):
            rules.add_column(col, justify="left" if col == "rule" else "right", overflow="fold", no_wrap=col != "rule")
        for r in result["rules"]:
            rules.add_row(r["rule"] or f"[red]no rule[/] ({escape(r['example'])})", str(r["metrics"]),
                          "" if r["abs_tol"] is None else f"{r['abs_tol']:.3g}",
                          "" if r["rel_tol"] is None else f"{r['rel_tol']:.3g}", f"{r['max_range']:.3g}",
                          f"{r['max_rel_range']:.3g}", f"{r['suggested_abs']:.3g}", f"{r['suggested_rel']:.3g}")
        console.print(rules)
        narrow = [n for n, m in result["metrics"].items() if m["tol_over_range"] is not None and m["tol_over_range"] < 1]
        no_rule = [n for n, m in result["metrics"].items() if m["rule"] is None]
        console.print(f"wrote {out}; {len(narrow)} tolerances narrower than the observed spread; "
                      f"{len(no_rule)} metrics have no tolerance rule" + (f" (e.g. {', '.join(no_rule[:3])})" if no_rule else ""))

    guard(body)


@app.command("show-config")
def show_config(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate the params file and print the resolved configuration (defaults filled in)."""
    import yaml

    def body() -> None:
        cfg, _ = context(params)
        console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, markup=False)

    guard(body)
