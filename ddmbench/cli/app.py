"""The typer app, the options every command shares, and the guard that turns a DDMBenchError into one line.

Heavy libraries (Lightning, MLflow, torchmetrics) are imported inside the commands that need them,
so `--help` and config errors answer fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ddmbench.allocator import keep_freed_memory
from ddmbench.config import Config, load_config, with_trainer
from ddmbench.console import err_console, set_quiet
from ddmbench.errors import ConfigError, DDMBenchError
from ddmbench.pipeline.paths import Paths
from ddmbench.sampling.policies import PARAMS, REGISTRY, PolicySpec, label_forms, make_policy

app = typer.Typer(help="Benchmark harness for Decentralized Diffusion Models (DDMs) on MNIST.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOption = Annotated[Path, typer.Option("--params", help="Params file. Outputs go under the current folder (the repo root).")]
def _param_option(name: str) -> Any:
    """The CLI option of a policy parameter, its flag and help derived from the policy registry."""
    takes = " / ".join(d.name for d in REGISTRY.values() if name in d.params)
    return typer.Option(PARAMS[name].option, help=f"{name} ({PARAMS[name].must}) for --policy {takes}.")


PolicyOption = Annotated[str, typer.Option("--policy", help=f"Policy label or name: {label_forms()}.")]
KOption = Annotated[Optional[int], _param_option("k")]
TauOption = Annotated[Optional[float], _param_option("tau")]
PMassOption = Annotated[Optional[float], _param_option("p_mass")]
TempOption = Annotated[Optional[float], _param_option("temperature")]
DevicesOption = Annotated[Optional[int], typer.Option("--devices", help="Devices (processes) per node; overrides "
                                                      "trainer.devices. batch_size stays per device.")]
NodesOption = Annotated[Optional[int], typer.Option("--num-nodes", help="Nodes; overrides trainer.num_nodes.")]


@app.callback()
def options(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (for logs; also off when "
                                                "the CI environment variable is set). Tables and errors still print.")
                             ] = False) -> None:
    """Benchmark harness for Decentralized Diffusion Models (DDMs) on MNIST."""
    set_quiet(quiet)


def context(params: Path) -> tuple[Config, Paths]:
    cfg = load_config(params)
    return cfg, Paths(Path.cwd())


def train_context(params: Path, devices: int | None, num_nodes: int | None) -> tuple[Config, Paths]:
    cfg, paths = context(params)
    return with_trainer(cfg, devices=devices, num_nodes=num_nodes), paths


def policy_option(cfg: Config, policy: str, k: int | None, tau: float | None, p: float | None,
            temperature: float | None) -> PolicySpec:
    extra = {"k": k, "tau": tau, "p_mass": p, "temperature": temperature}
    try:
        if any(v is not None for v in extra.values()):
            if policy not in REGISTRY:
                raise ValueError(f"'{policy}' is a label; give a label alone (--policy top-2) or a policy name "
                                 "with its parameters (--policy top --k 2)")
            spec = make_policy(policy, **{key: v for key, v in extra.items() if v is not None})
            spec.check(cfg.cluster.k)
            return spec
        return cfg.policy(policy)
    except ValueError as exc:
        raise ConfigError(f"--policy: {exc}") from None


def guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; a DDMBenchError becomes one line on stderr and exit code 2."""
    from ddmbench.pipeline import tracking

    tracking.forget_failures()  # one warning per command for an unreachable MLflow, even in-process
    try:
        with tracking.stage_clock():  # the command's MLflow run starts when its work does
            return fn()
    except DDMBenchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None



def main() -> None:
    keep_freed_memory()  # before any tensor: the heap's thresholds hold for the whole process
    app()
