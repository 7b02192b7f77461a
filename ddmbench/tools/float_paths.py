"""Float paths: which CI baseline a run's determinism can be judged against.

A same-seed run reproduces bit for bit only on the same float path: the CPU's vector ISA (AVX2 and AVX-512
run other oneDNN/ATen kernels) and torch's intra-op thread count (reductions split differently). Both were
measured to train another evaluator from the same seed (reports/baseline/README.md). A baseline records the
machine it was made on (:func:`ddmbench.hardware.machine_fingerprint`); one that did not record its threads
matches any count.
"""

from __future__ import annotations

from typing import Any

from ddmbench.errors import ArtifactError
from ddmbench.hardware import machine_fingerprint


def float_path(doc: dict[str, Any]) -> str | None:
    """The vector ISA a baseline was made on; None for a baseline that did not record its machine."""
    machine = doc.get("machine")
    return str(machine["isa"]) if isinstance(machine, dict) and machine.get("isa") else None


def float_threads(doc: dict[str, Any]) -> int | None:
    """The intra-op thread count a baseline was made with; None where it was not recorded."""
    machine = doc.get("machine")
    return int(machine["threads"]) if isinstance(machine, dict) and machine.get("threads") else None


def this_path(isa: str | None, threads: int | None) -> tuple[str, int]:
    fingerprint = machine_fingerprint()
    return str(isa or fingerprint["isa"]), int(threads or fingerprint["threads"])


def threads_text(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def same_path(doc: dict[str, Any], isa: str, threads: int) -> bool:
    return float_path(doc) in (None, isa) and float_threads(doc) in (None, threads)


def choose_baseline(baselines: dict[str, dict[str, Any]], isa: str | None = None,
                    threads: int | None = None) -> tuple[str, dict[str, Any]]:
    """(name, baseline) to judge a run made on this float path (vector ISA ``isa``, ``threads`` intra-op threads;
    default this process's) with: the first made on the same path (or that did not record it), else the first
    on the same ISA, else the first given (then :func:`compare` gates the contrasts alone)."""
    if not baselines:
        raise ArtifactError("no baseline given; make one with `ddmbench baseline --why '...'`")
    isa, threads = this_path(isa, threads)
    same = [name for name, doc in baselines.items() if same_path(doc, isa, threads)]
    same_isa = [name for name, doc in baselines.items() if float_path(doc) in (None, isa)]
    name = (same or same_isa or list(baselines))[0]
    return name, baselines[name]
