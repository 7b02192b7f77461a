"""The `ddmbench` command: one subcommand per pipeline stage (``stages``), plus ``tools``, ``studies``, ``measure``, ``ddm``."""

from ddmbench.cli import ddm, measure, stages, studies, tools  # noqa: F401  (importing them registers their commands)
from ddmbench.cli.app import app, main

__all__ = ["app", "main"]
