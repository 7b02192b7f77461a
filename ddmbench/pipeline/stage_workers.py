"""`ddmbench repro --jobs N`: the stale members of a DVC foreach group run side by side in N processes.

A foreach group is the stages one ``foreach`` of dvc.yaml makes (``train-expert@0..K-1``, ``sample@<policy>``,
``evaluate@<policy>``, ``analyze@<policy>``): same command, one ``--expert``/``--policy`` value each, and
no member reads another's outputs. On a small CPU, N processes of ``threads // N`` intra-op threads each
use the cores better than one process of ``threads`` threads on these small nets (measured on 2 cores:
docs/speed.md).

DVC still decides everything: its plan, its staleness test, dvc.lock. When DVC reaches the first member of a
group, every member that is stale and whose upstream stages DVC has already processed runs in the worker
pool (DVC's run cache is tried first, in this process, as ``Stage.run`` does); DVC then reaches each member
in its own order and only records what the worker wrote (deps and outs hashed, dvc.lock, run cache).
A member that was not ready, or whose worker failed, is left to the normal in-process path.

Each stage's result depends on its inputs and seeds only, never on which process ran it or when; the one
thing a worker changes is the number of intra-op threads, and another thread count is another float path
(training diverges in the last bits and carries it into the weights: docs/regression-gate.md), so
``--jobs 2`` on 2 cores is not bit-identical to ``--jobs 1``.
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import stage_clock

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

StageCall = tuple[str, str | None, str | None]  # (pipeline module, --expert/--policy, value)


def group_of(stage: Stage) -> str | None:
    """The foreach group of a stage (``sample`` for ``sample@full``); None for a stage of its own."""
    name = stage.addressing.rsplit(":", 1)[-1]
    return name.split("@", 1)[0] if "@" in name else None


def _init_worker(threads: int) -> None:
    import torch

    from ddmbench.allocator import keep_freed_memory

    keep_freed_memory()  # a spawned worker starts with glibc's defaults, as `ddmbench` itself does
    torch.set_num_threads(threads)


def run_body(cfg: Config, paths: Paths, module: str, option: str | None, value: str | None) -> None:
    """One stage's work, as ``ddmbench <stage> [--expert N | --policy LABEL]`` would do it."""
    args: list[Any] = [] if option is None else [int(str(value)) if option == "--expert" else cfg.policy(str(value))]
    with stage_clock():  # the stage's MLflow run starts when its work does
        importlib.import_module(f"ddmbench.pipeline.{module}").run(cfg, paths, *args)


class StageWorkers:
    """A pool of ``jobs`` spawned processes (``threads`` intra-op threads each) that runs foreach groups early.

    ``processed`` must hold the addressing of every stage DVC has handed to ``repro_fn`` so far (run or up
    to date); ``ran_early`` holds the stages a worker ran, for ``repro_fn`` to record instead of running."""

    def __init__(self, jobs: int, threads: int, cfg: Config, paths: Paths) -> None:
        self.jobs, self.threads, self.cfg, self.paths = jobs, threads, cfg, paths
        self.processed: set[str] = set()
        self.ran_early: set[str] = set()
        self._groups_seen: set[str] = set()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> StageWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:  # spawn: a forked child of a process that has run OpenMP threads can hang
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def ready(self, stage: Stage, graph: Any) -> bool:
        """Every upstream stage of ``stage`` (its successors in DVC's graph) has been processed already."""
        return all(up.addressing in self.processed for up in graph.successors(stage))

    def run_group(self, stage: Stage, repo: Repo, call_of: Callable[[Any], StageCall | None]) -> None:
        """On the first member of a group DVC reaches: run the group's stale, ready members in the pool
        (``call_of``: a stage's command -> its pipeline call, None when DVC must run it)."""
        from dvc.stage.cache import RunCacheNotFoundError

        group = group_of(stage)
        if group is None or group in self._groups_seen:
            return
        self._groups_seen.add(group)
        graph = repo.index.graph
        todo: list[tuple[Stage, StageCall]] = []
        for member in repo.index.stages:
            call = call_of(member.cmd)
            if group_of(member) != group or call is None or not self.ready(member, graph) or not member.changed():
                continue
            member.remove_outs(ignore_remove=False, force=False)
            try:
                member.repo.stage_cache.restore(member)  # DVC's run cache: nothing to run
                continue
            except RunCacheNotFoundError:
                todo.append((member, call))
        if len(todo) < 2:
            return
        names = ", ".join(m.addressing for m, _ in todo)
        console.print(f"[bold]{escape(group)}@*[/]: {len(todo)} stale stages in {self.jobs} processes of "
                      f"{self.threads} thread(s): {escape(names)}", highlight=False, soft_wrap=True)
        pool = self._executor()
        futures = {pool.submit(run_body, self.cfg, self.paths, *call): member for member, call in todo}
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            wait(futures)  # a running task cannot be stopped; let it end before the error is raised
            raise failed.exception()  # type: ignore[misc]
        self.ran_early.update(member.addressing for member in futures.values())
