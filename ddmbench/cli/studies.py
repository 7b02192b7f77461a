"""Commands that study many runs: ablations (the K x clustering grid) and replicate (across training seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddmbench.cli.app import ParamsOption, app, context, guard
from ddmbench.console import console
from ddmbench.errors import ConfigError


@app.command()
def ablations(from_json: Annotated[Optional[Path], typer.Option(
                  "--from-json", help="A saved `dvc exp show --json` document (default: run it here).")] = None,
              workspace: Annotated[bool, typer.Option(
                  help="Also list this workspace's metrics files as a row (the only row when there is no DVC "
                       "repository or no experiment).")] = False,
              out: Annotated[Path, typer.Option(help="Markdown table to write; the grid's JSON and figure go beside it "
                                                 "(runs/ is git-ignored).")] = Path("runs/ablations.md"),
              from_runs: Annotated[Optional[list[Path]], typer.Option(
                  "--from-runs", help="Folders of finished runs (params.yaml + metrics/), e.g. one per grid cell "
                                      "and seed that each ran `ddmbench repro`; repeat the option.")] = None,
              policy: Annotated[str, typer.Option(help="The grid's policy: policy − full by K and clustering.")] = "top-2",
              metric: Annotated[str, typer.Option(help="The grid's metric (a contrast.json metric: kid, fid, "
                                                       "amplification@0.1, ...).")] = "kid",
              params: ParamsOption = Path("params.yaml")) -> None:
    """Collect the DVC experiments' metrics (K, clustering method, FID per policy) into one table, and the
    mechanism grid: paired policy − full by K and clustering across training seeds (table, JSON, figure)."""
    from rich.table import Table

    from ddmbench.io import read_json, write_text
    from ddmbench.tools import ablations as ab

    def body() -> None:
        root, rows, sources = Path.cwd(), [], []
        if from_runs:
            rows = [ab.row_from_run(run) for run in from_runs]
            sources.append(f"{len(from_runs)} run folders")
        elif from_json or (root / ".dvc").is_dir():
            doc = read_json(from_json, "dvc exp show --json > FILE") if from_json else ab.exp_show(root)
            rows = ab.rows_from_exp_show(doc)
            sources.append(str(from_json) if from_json else "dvc exp show")
        if workspace or not rows:
            cfg, _ = context(params)
            rows.append(ab.row_from_workspace(root, cfg.model_dump(mode="json")))
            sources.append("the workspace")
        source = " and ".join(sources)
        header, cells = ab.table(rows)
        # on the terminal, a column with one value in every run is said once in the caption (the Markdown keeps it)
        shared = [i for i in range(1, len(header)) if len(rows) > 1 and len({row[i] for row in cells}) == 1]
        same = "; ".join(f"{header[i]}: {cells[0][i]}" for i in shared if cells[0][i])
        tbl = Table(title=f"ablations ({len(rows)} runs from {source})", caption=same + " in every run" if same else None)
        kept = [i for i in range(len(header)) if i not in shared]
        for i in kept:
            tbl.add_column(header[i], justify="left" if header[i] in ("experiment", "rev", "method", "features")
                           else "right", overflow="fold")
        for row in cells:
            tbl.add_row(*(row[i] for i in kept))
        console.print(tbl)
        cells = ab.grid(rows, policy, metric)
        figure = out.with_name(f"{out.stem}-{policy}-{metric.replace('@', '_')}.png")
        text = ab.markdown(rows, source)
        if cells:
            from ddmbench.io import write_json
            from ddmbench.tools.ablation_figure import ablation_figure

            console.print(ab.grid_table(cells))
            ablation_figure(cells, figure)
            write_json(out.with_suffix(".json"), {"policy": policy, "versus": "full", "metric": metric, "cells": cells})
            text += "\n" + ab.grid_markdown(cells) + f"\n![{policy} − full by K]({figure.name})\n"
        else:
            console.print(f"no run has a {policy} − full contrast in {metric}: no grid (metrics/contrast.json)")
        write_text(out, text)
        console.print(f"wrote {out}" + (f", {out.with_suffix('.json')} and {figure}" if cells else ""))

    guard(body)


@app.command()
def replicate(seeds: Annotated[list[str], typer.Option(
                  "--seeds", help="Training seeds, e.g. --seeds 0,1,2 (or repeat the option).")],
              run: Annotated[bool, typer.Option(
                  "--run/--collect", help="--run: queue one DVC experiment per seed (`dvc exp run --queue -S "
                                          "seed=<s>`) and start the queue; --collect: aggregate the finished ones.")] = False,
              jobs: Annotated[int, typer.Option(help="Experiments run at once by `dvc queue start --jobs`.")] = 1,
              from_json: Annotated[Optional[Path], typer.Option(
                  "--from-json", help="With --collect: a saved `dvc exp show --json` document.")] = None,
              from_runs: Annotated[Optional[list[Path]], typer.Option(
                  "--from-runs", help="With --collect: folders of finished runs (one per seed, e.g. clones that "
                                      "each ran `ddmbench repro` with its own seed) instead of DVC experiments; "
                                      "repeat the option.")] = None,
              out: Annotated[Path, typer.Option(
                  help="With --collect: the JSON to write (e.g. one per profile).")] = Path("reports/replicate.json"),
              params: ParamsOption = Path("params.yaml")) -> None:
    """Headline paired contrasts across training seeds: queue R pipelines as DVC experiments, then collect
    every seed's value, a between-seed t-interval and the seeds that agree in sign (reports/replicate.json)."""
    import os

    from ddmbench.io import read_json
    from ddmbench.tools import replicate as rep

    def body() -> None:
        cfg, paths = context(params)
        chosen = rep.parse_seeds(seeds)
        if run:
            if params.resolve() != (paths.root / "params.yaml").resolve():
                raise ConfigError(f"--params {params}: DVC experiments vary params.yaml; cp {params} params.yaml "
                                  "first, then run without --params")
            data_root = None if Path(cfg.data.root).is_absolute() else str((paths.root / cfg.data.root).resolve())
            # queued runs happen in a copy of the repo: point MLflow at this repo's store, as the ablations do
            env = ({"MLFLOW_TRACKING_URI": f"sqlite:///{paths.root.resolve()}/mlflow.db"}
                   if cfg.tracking.enabled and cfg.tracking.uri is None and "MLFLOW_TRACKING_URI" not in os.environ
                   else {})
            rep.launch(paths.root, rep.queue_commands(chosen, jobs, data_root), env)
            console.print(f"queued seeds {chosen}; follow with `dvc queue status`, then "
                          f"`ddmbench replicate --collect --seeds {','.join(map(str, chosen))}`")
            return
        if from_json and from_runs:
            raise ConfigError("--from-json and --from-runs: give one source of finished runs, not both")
        doc = read_json(from_json, "dvc exp show --json > FILE") if from_json else None
        rep.collect(cfg, paths, chosen, doc, from_runs, out)

    guard(body)
