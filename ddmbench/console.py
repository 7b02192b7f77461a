"""Rich console output: progress bars on stderr, tables on stdout, rank-zero only under DDP.

Bars are off with the global ``--quiet`` flag (which sets ``DDMBENCH_QUIET=1``, so the stage commands that DVC
or Lightning's DDP launcher start inherit it) or when ``CI`` is set to anything but 0/false/no (logs then keep
only the lines that matter)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Off a terminal (DVC, CI logs) rich would assume 80 columns and squeeze the tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


QUIET_ENV = "DDMBENCH_QUIET"
_OFF = ("", "0", "false", "no")


def set_quiet(quiet: bool) -> None:
    """The global ``--quiet`` flag: no progress bars in this process or the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"


def bars_enabled() -> bool:
    """False under ``--quiet`` (DDMBENCH_QUIET) or in CI (CI=true, as GitHub Actions and GitLab set it)."""
    return all(os.environ.get(key, "").strip().lower() in _OFF for key in (QUIET_ENV, "CI"))


def is_rank_zero() -> bool:
    """Global rank 0 under torchrun (RANK), SLURM (SLURM_PROCID) or Lightning's own launcher (LOCAL/NODE_RANK)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a rich progress bar of ``total`` units: `description ━━━ i/N elapsed ETA`.
    Without bars (``bars_enabled``) ``advance`` does nothing."""
    if not bars_enabled():
        yield lambda n: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def show_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A (headers, rows) table of strings on stdout: the first column left-aligned, the numbers right."""
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
