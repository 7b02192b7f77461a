"""`ddmbench run`: one policy's results, brought up to date through DVC's own DAG (dvc.yaml + dvc.lock).

DVC decides what is stale, from the params and dependency hashes it records in dvc.lock, never from whether
a file exists. A policy listed in `policies` is reproduced as its DVC stages `sample@<label>`,
`evaluate@<label>` and `analyze@<label>` (with everything upstream of them). A policy that is not listed has
no DVC stages: DVC brings the models it needs up to date, then it is sampled, evaluated and analysed here,
and its files go under ``outputs/adhoc/``, ``metrics/adhoc/`` and ``plots/adhoc/`` (``AdhocPaths``), which no
stage reads and no report shows.

A stale stage whose command is ``ddmbench <stage> [--expert N | --policy LABEL]`` runs in this process
(``Repo.reproduce``'s ``repro_fn`` hook; it saves a new interpreter, seconds per stage, and otherwise does
what ``Stage.run`` does: remove the outs, restore from DVC's run cache if it can, hold DVC's read/write
lock on the deps and outs, then record the new hashes in dvc.lock). Any other command, and every stage
when training runs on several processes (Lightning's DDP launcher re-executes the command line), is left
to DVC to run as a subprocess.

Concurrency: the whole run holds ``.dvc/tmp/ddmbench-run.lock`` (one ``ddmbench run`` per folder) and DVC's
repo lock (so a ``dvc repro`` started meanwhile is refused by DVC), and it refuses to start while a
``dvc repro`` is running a stage (DVC's ``.dvc/tmp/rwlock`` lists it).
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import inspect
import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError, ConfigError, DDMBenchError, first_line
from ddmbench.io import read_json
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.stage_workers import StageWorkers, run_body
from ddmbench.pipeline.tracking import stage_clock
from ddmbench.sampling.policies import PolicySpec

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

RUN_LOCK = "ddmbench-run.lock"


class AdhocPaths(Paths):
    """Paths whose per-policy files (every method taking a ``label``) sit under an ``adhoc`` folder:
    outputs/samples/x.pt -> outputs/adhoc/samples/x.pt, metrics/evaluate/x.json -> metrics/adhoc/evaluate/x.json.
    Models, data and clusters are the pipeline's own."""


def _adhoc(method: Any) -> Any:
    def per_policy(self: Paths, label: str) -> Path:
        top, *rest = method(self, label).relative_to(self.root).parts
        return self.root.joinpath(top, "adhoc", *rest)
    per_policy.__doc__ = method.__doc__
    return per_policy


PER_POLICY = [name for name, fn in vars(Paths).items() if inspect.isfunction(fn) and "label" in inspect.signature(fn).parameters]
for _name in PER_POLICY:
    setattr(AdhocPaths, _name, _adhoc(getattr(Paths, _name)))


# ----------------------------------------------------------------------------------------------
# locks
# ----------------------------------------------------------------------------------------------

def _holder(pid: int) -> str:
    import psutil

    try:
        return f"pid {pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}"
    except (psutil.Error, OSError):
        return f"pid {pid}"


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """One `ddmbench run` per folder: an exclusive flock on .dvc/tmp/ddmbench-run.lock, holding its pid.

    Hand-written with fcntl because `filelock` truncates the file on open, so it cannot say who holds it."""
    path = root / ".dvc" / "tmp" / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            who = _holder(int(pid)) if pid.isdigit() else "another process"
            raise ArtifactError(f"another `ddmbench run` ({who}) is running in {root} (lock {path}); "
                                "wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def check_project(root: Path) -> None:
    """`ddmbench run` needs dvc.yaml and an initialised DVC project at the repo root."""
    if not (root / "dvc.yaml").exists():
        raise ConfigError(f"{root}: no dvc.yaml here; `ddmbench run` reproduces the pipeline through DVC, so run it "
                          "from the repo root")
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root}: not a DVC project (no .dvc/); run `dvc init` (or `dvc init --no-scm` outside "
                          "git) first")


@contextmanager
def dvc_repo(root: Path) -> Iterator[Repo]:
    """The DVC repo at ``root``, its lock held throughout (a `dvc repro` started meanwhile is refused)."""
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    repo = Repo(str(root))
    acquired = False
    try:
        with lock_repo(repo):
            acquired = True
            _refuse_running_stages(Path(repo.tmp_dir))
            yield repo
    except LockError:
        if acquired:
            raise
        lock = Path(repo.tmp_dir) / "lock"
        pid = lock.read_text().strip() if lock.exists() else ""
        who = _holder(int(pid)) if pid.isdigit() else "another DVC process"
        raise ArtifactError(f"{root}: DVC is busy ({who} holds {lock}); wait for it to finish "
                            "(or remove the lock file if that process is gone)") from None
    finally:
        repo.close()


def _refuse_running_stages(tmp_dir: Path) -> None:
    """DVC releases its repo lock while a stage's command runs; the running stage is listed in .dvc/tmp/rwlock."""
    import psutil

    path = tmp_dir / "rwlock"
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    infos = [*lock.get("write", {}).values(), *(i for infos in lock.get("read", {}).values() for i in infos)]
    live = [i for i in infos if isinstance(i, dict) and psutil.pid_exists(int(i.get("pid", -1)))]
    if live:
        raise ArtifactError(f"a DVC stage is running here (pid {live[0]['pid']}: {str(live[0].get('cmd'))[:120]}, "
                            f"see {path}); wait for that `dvc repro` to finish, then re-run")


# ----------------------------------------------------------------------------------------------
# reproduction
# ----------------------------------------------------------------------------------------------

def stage_call(cmd: Any) -> tuple[str, str | None, str | None] | None:
    """``ddmbench <stage> [--expert N | --policy LABEL]`` -> (pipeline module, option, value); None for any other
    command (DVC runs those itself)."""
    if not isinstance(cmd, str) or "\n" in cmd:
        return None
    argv = shlex.split(cmd)
    if len(argv) not in (2, 4) or argv[0] != "ddmbench" or (len(argv) == 4 and argv[2] not in ("--expert", "--policy")):
        return None
    module = argv[1].replace("-", "_")
    if importlib.util.find_spec(f"ddmbench.pipeline.{module}") is None:
        return None
    return (module, argv[2], argv[3]) if len(argv) == 4 else (module, None, None)


def _why(stage: Stage, most: int = 3) -> str:
    """DVC's status of a stale stage in a few words: `params.yaml: expert.steps modified`, `outputs/x.pt deleted`."""
    if stage.deps and not any(dep.hash_info for dep in stage.deps):
        return "not in dvc.lock yet"
    reasons: list[str] = []
    for entry in stage.status().get(stage.addressing, []):
        if isinstance(entry, str):
            reasons.append(entry)
            continue
        for changes in entry.values():
            for path, change in changes.items():
                if isinstance(change, dict):
                    reasons.append(f"{path}: " + ", ".join(f"{k} {v}" for k, v in change.items()))
                else:
                    reasons.append(f"{path} {change}")
    more = f" (+{len(reasons) - most} more)" if len(reasons) > most else ""
    return "; ".join(reasons[:most]) + more if reasons else "changed"


def _in_process(stage: Stage, cfg: Config, paths: Paths, module: str, option: str | None, value: str | None) -> bool:
    """What ``Stage.run`` does, with the command's body called here instead of in a new interpreter.
    Returns False when DVC's run cache restored the outputs instead (then nothing ran, nothing is logged)."""
    from dvc.rwlock import rwlock
    from dvc.stage.cache import RunCacheNotFoundError

    stage.remove_outs(ignore_remove=False, force=False)
    fs_paths = lambda items: [item.fs_path for item in items]  # noqa: E731
    with rwlock(stage.repo.tmp_dir, stage.repo.fs, " ".join(sys.argv), fs_paths(stage.deps), fs_paths(stage.outs),
                stage.repo.config["core"].get("hardlink_lock", False)):
        try:
            stage.repo.stage_cache.restore(stage)
            ran = False
        except RunCacheNotFoundError:
            stage.save_deps()
            run_body(cfg, paths, module, option, value)
            ran = True
    _record(stage)
    return ran


def _record(stage: Stage) -> None:
    """Hash the stage's deps and outs into the stage (``Stage.save``; dvc.lock is written by ``stage.dump``),
    the run cache and the DVC cache, as ``Stage.run`` does after the command."""
    no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    stage.save(run_cache=not no_cache_outs)
    stage.commit()


def reproduce(repo: Repo, cfg: Config, paths: Paths, targets: list[str] | None, jobs: int = 1) -> list[str]:
    """``dvc repro <targets>`` (upstream stages included; None: every stage of dvc.yaml); returns the stages
    that ran, in order. ``jobs`` > 1 (whole pipeline only): foreach groups run in that many processes
    (``StageWorkers``), each with an equal share of this process's intra-op threads."""
    import torch
    from dvc.exceptions import ReproductionError

    ran: list[str] = []
    in_process = cfg.trainer.world_size == 1
    workers = StageWorkers(jobs, max(1, torch.get_num_threads() // jobs), cfg, paths)
    parallel = jobs > 1 and not targets and in_process

    def repro_fn(stage: Stage, upstream: Any = None, force: bool = False, **_: Any) -> Stage | None:
        try:
            return handle(stage, upstream, force)
        finally:
            workers.processed.add(stage.addressing)

    def handle(stage: Stage, upstream: Any, force: bool) -> Stage | None:
        if parallel:
            workers.run_group(stage, repo, stage_call)
        if not force and not stage.changed(upstream=upstream):
            console.print(f"[bold]{escape(stage.addressing)}[/]: up to date", highlight=False)
            return None
        call = stage_call(stage.cmd) if in_process else None
        if stage.addressing in workers.ran_early:
            _record(stage)
            console.print(f"[bold]{escape(stage.addressing)}[/]: ran in a worker process; recorded", highlight=False)
            stage.dump(update_pipeline=False)
            ran.append(stage.addressing)
            return stage
        how = "running" if call else "DVC runs"
        console.print(f"[bold]{escape(stage.addressing)}[/]: {escape(_why(stage))}; {how} `{escape(str(stage.cmd))}`",
                      highlight=False, soft_wrap=True)
        if call is None:
            stage.run()
        elif not _in_process(stage, cfg, paths, *call):
            console.print(f"[bold]{escape(stage.addressing)}[/]: restored from DVC's run cache (a run with these "
                          "deps and params); `dvc repro --force` to run it again", highlight=False, soft_wrap=True)
        stage.dump(update_pipeline=False)
        ran.append(stage.addressing)
        return stage

    try:  # dvc.yaml:stage, so that DVC reads this root's dvc.yaml whatever the current folder
        dvc_file = paths.root / "dvc.yaml"
        with workers:
            repo.reproduce([f"{dvc_file}:{target}" for target in targets] if targets else [str(dvc_file)],
                           repro_fn=repro_fn)
    except ReproductionError as exc:
        cause = exc.__cause__
        if isinstance(cause, DDMBenchError):
            raise cause from None
        raise ArtifactError(f"dvc repro {' '.join(targets or [])}: {first_line(cause or exc)}".replace("  ", " ")) from None
    return ran


def reproduce_pipeline(cfg: Config, paths: Paths, targets: list[str] | None = None, jobs: int = 1) -> list[str]:
    """``ddmbench repro``: what ``dvc repro [targets]`` does, every stale ``ddmbench`` stage run in this process
    (``jobs`` > 1: foreach groups in that many worker processes, ``StageWorkers``).

    Same DAG, same staleness test, same dvc.lock and run cache as ``dvc repro``; it only saves the interpreter
    and import start-up each stage's subprocess costs (5-11 s per stage, 35 stages on the CI profile)."""
    check_project(paths.root)
    with run_lock(paths.root), dvc_repo(paths.root) as repo:
        return reproduce(repo, cfg, paths, targets, jobs)


def upstream_targets(cfg: Config, spec: PolicySpec) -> list[str]:
    """The DVC stages whose outputs a policy outside `policies` reads: data, evaluator, clusters and its models."""
    targets = ["prepare", "train-evaluator", "features"]
    if cfg.ddm.folder is not None:
        return [*targets, f"import-ddm@{cfg.ddm.name}"]
    targets.append("cluster@here")
    if spec.uses_router:
        targets.append("train-router@here")
    targets += [f"train-expert@{k}" for k in cfg.experts] if spec.uses_experts else ["train-monolith@here"]
    return targets


def run_policy(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    """Bring ``spec``'s results up to date; returns the evaluate metrics with the analyze metrics under "analysis"."""
    from ddmbench.pipeline import analyze, evaluate, sample

    listed = spec.label in cfg.policies
    check_project(paths.root)
    with run_lock(paths.root), dvc_repo(paths.root) as repo:
        if listed:
            reproduce(repo, cfg, paths, [f"{stage}@{spec.label}" for stage in ("sample", "evaluate", "analyze")])
            metrics = read_json(paths.eval_metrics(spec.label), f"ddmbench evaluate --policy {spec.label}")
            analysis = read_json(paths.analysis_metrics(spec.label), f"ddmbench analyze --policy {spec.label}")
            return {**metrics, "analysis": analysis}
        reproduce(repo, cfg, paths, upstream_targets(cfg, spec))
        adhoc = AdhocPaths(paths.root)
        console.print(f"[bold]{escape(spec.label)}[/] is not in `policies`: sampled, evaluated and analysed outside "
                      f"DVC, into {adhoc.samples(spec.label).parent.parent.relative_to(paths.root)}/, "
                      f"{adhoc.eval_metrics(spec.label).parent.parent.relative_to(paths.root)}/ and "
                      f"{adhoc.curves(spec.label).parent.parent.relative_to(paths.root)}/ (not in dvc.lock or the report)",
                      highlight=False, soft_wrap=True)
        with stage_clock():
            sample.run(cfg, adhoc, spec)
        with stage_clock():
            evaluated = evaluate.run(cfg, adhoc, spec)
        with stage_clock():
            return {**evaluated, "analysis": analyze.run(cfg, adhoc, spec)}


def print_result(spec: PolicySpec, m: dict[str, Any]) -> None:
    table = Table(title=f"policy {spec.label}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    kid = m.get("kid_unbiased", m["kid"])  # kid_ci95 is the interval of the unbiased all-pairs KID
    fid_ci, kid_ci = m.get("fid_ci95") or (m["fid"], m["fid"]), m.get("kid_ci95") or (kid, kid)
    rows = [("FD, classifier features [95% CI]", f"{m['fid']:.2f} [{fid_ci[0]:.2f}, {fid_ci[1]:.2f}]"),
            ("KID, classifier features (all pairs) [95% CI]", f"{kid:.4f} [{kid_ci[0]:.4f}, {kid_ci[1]:.4f}]"),
            ("FD floor, classifier features (real train images)", f"{m['fid_reference_train']:.2f}"),
            *((f"{name} [95% CI]", f"{m[key]:.2f} [{m[key + '_ci95'][0]:.2f}, {m[key + '_ci95'][1]:.2f}]")
              for key, name in (("fid_inception", "FID, Inception-v3 features"), ("fd_dinov2", "FD, DINOv2 features"))
              if key in m),
            ("expert evals / image", f"{m['cost']['expert_evals_per_image']:.1f}"),
            ("router evals / image", f"{m['cost']['router_evals_per_image']:.1f}"),
            ("GFLOPs / image", f"{m['cost']['gflops_per_image']:.3f}"),
            ("sampling wall time (s)", f"{m['cost']['wall_time_s']:.1f}"),
            ("images / s", f"{m['cost']['images_per_s']:.1f}"),
            ("classifier confidence", f"{m['confidence']:.3f}"), ("class entropy (nats)", f"{m['class_entropy']:.3f}")]
    a = m.get("analysis")
    if a is not None:
        for key, amp in a["amplification"].items():
            rows.append((f"amplification {key.replace('_', ' = ')} (mean [95% CI])",
                         f"{amp['mean']:.3g} [{amp['mean_ci95'][0]:.3g}, {amp['mean_ci95'][1]:.3g}]"))
        conv = a["convergence"]
        rows += [("local Lipschitz (mean over t)", f"{a['lipschitz']['mean']:.3g}"),
                 (f"RMS error vs {conv['reference_steps']} steps", f"{conv['error_at_nfe']['mean']:.3g}"),
                 ("empirical order", "–" if conv["order"] is None else f"{conv['order']:.2f}")]
        if a.get("alignment") and a["alignment"]["hit_rate"] is not None:
            rows.append(("alignment hit rate", f"{a['alignment']['hit_rate']:.3f}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
