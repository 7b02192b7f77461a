"""`ddmbench precision-check`: bf16 vs fp32 sampling of the run's trained models, paired by seed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddmbench.cli.app import ParamsOption, app, context, guard
from ddmbench.console import console
from ddmbench.errors import ConfigError


@app.command("precision-check")
def precision_check(policies: Annotated[Optional[list[str]], typer.Option(
                        "--policy", help="Policy label to check (repeat); default: every policy in params.yaml.")] = None,
                    out: Annotated[Path, typer.Option(help="Where to save the JSON (runs/ is git-ignored).")] = Path(
                        "runs/precision.json"),
                    params: ParamsOption = Path("params.yaml")) -> None:
    """Sample the trained models in float32 and in bf16-mixed from the same seeds; paired ΔFID_inf / ΔKID with
    95% intervals next to the fp32 sampling half-width, and the speed-up. Adopt bf16 only where every paired
    interval lies inside that half-width and it samples faster. The analyze stage always traces in float32."""
    from rich.markup import escape
    from rich.table import Table

    from ddmbench.hardware import cpu_bf16_refusal
    from ddmbench.io import write_json
    from ddmbench.sampling.policies import parse_policy
    from ddmbench.tools import precision_check as check

    def body() -> None:
        cfg, paths = context(params)
        if cfg.sample.device == "cpu" and (refusal := cpu_bf16_refusal("precision-check")):
            raise ConfigError(refusal)
        labels = policies or list(cfg.policies)
        try:
            specs = [parse_policy(label) for label in labels]
        except ValueError as exc:
            raise ConfigError(f"--policy: {exc}") from None
        result = check.run(cfg, paths, specs)
        write_json(out, result)
        table = Table(title=f"bf16-mixed − fp32 sampling, paired by seed (N = {cfg.sample.n})")
        for col in ("policy", "FID_inf fp32", "ΔFID_inf [95%]", "± sampling", "ΔKID [95%]", "± sampling",
                    "pixels differing", "speed-up", "inside"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for r in result["rows"]:
            d, h = r["delta"], r["sampling_half_width"]
            table.add_row(escape(r["policy"]), f"{r['fid_inf_fp32']:.3f}",
                          f"{d['fid']['estimate']:+.3f} [{d['fid']['ci95'][0]:+.3f}, {d['fid']['ci95'][1]:+.3f}]",
                          f"{h['fid']:.3f}",
                          f"{d['kid']['estimate']:+.4f} [{d['kid']['ci95'][0]:+.4f}, {d['kid']['ci95'][1]:+.4f}]",
                          f"{h['kid']:.4f}", f"{r['pixels_differing']:.1%}", f"{r['speedup']:.2f}x",
                          "yes" if r["inside_sampling_interval"] else "[red]no[/]")
        console.print(table)
        console.print(f"{'adopt' if result['adopt'] else 'do not adopt'} bf16-mixed for sampling (quality "
                      f"{'inside' if result['quality_inside'] else 'outside'} the sampling intervals, "
                      f"{result['speedup']:.2f}x the fp32 speed); rule: {result['rule']}; wrote {out}",
                      highlight=False, soft_wrap=True)

    guard(body)
