"""Float paths: which CI baseline a run's determinism can be judged against.

A same-seed run reproduces bit for bit only on the same float path: the CPU's vendor and vector ISA (AVX2 and
AVX-512 run other oneDNN/ATen kernels, and an AMD and an Intel CPU with the same AVX-512 flags were measured
to train another evaluator from the same seed: MKL and oneDNN dispatch by vendor too) and torch's intra-op
thread count (reductions split differently); each is measured in docs/regression-gate.md. A baseline
records the machine it was made on (:func:`ddmbench.hardware.machine_fingerprint`); one that did not record its
threads matches any count, and one whose CPU model names no known vendor matches any vendor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddmbench.errors import ArtifactError
from ddmbench.hardware import machine_fingerprint


@dataclass(frozen=True)
class FloatPath:
    """vendor ('intel', 'amd' or None where unknown), vector ISA and intra-op threads (None: not recorded)."""

    vendor: str | None
    isa: str | None
    threads: int | None

    def matches(self, other: FloatPath, parts: tuple[str, ...] = ("vendor", "isa", "threads")) -> bool:
        """True where each of ``parts`` is equal, or unknown (None) on either side."""
        return all(getattr(self, p) is None or getattr(other, p) is None or getattr(self, p) == getattr(other, p)
                   for p in parts)

    def text(self) -> str:
        parts = [p for p in (self.vendor, self.isa) if p]
        return " ".join(parts or ["unknown CPU"]) + (f" with {threads_text(self.threads)}" if self.threads else "")


def vendor_of(cpu: str | None) -> str | None:
    """'intel' or 'amd' from a CPU model name ('Intel(R) Xeon(R) ...', 'AMD EPYC ...'); None otherwise."""
    name = (cpu or "").lower()
    return "intel" if "intel" in name else "amd" if "amd" in name else None


def path_of(doc: dict[str, Any]) -> FloatPath:
    """The float path a baseline (or any document with a ``machine`` fingerprint) was made on."""
    machine = doc.get("machine")
    if not isinstance(machine, dict):
        return FloatPath(None, None, None)
    return FloatPath(vendor_of(machine.get("cpu")), str(machine["isa"]) if machine.get("isa") else None,
                     int(machine["threads"]) if machine.get("threads") else None)


def this_path(isa: str | None = None, threads: int | None = None, vendor: str | None = None) -> FloatPath:
    """This process's float path; each part can be given instead (tests, or a run made elsewhere)."""
    fingerprint = machine_fingerprint()
    return FloatPath(vendor or vendor_of(str(fingerprint["cpu"])), str(isa or fingerprint["isa"]),
                     int(threads or fingerprint["threads"]))


def threads_text(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def same_path(doc: dict[str, Any], here: FloatPath) -> bool:
    return path_of(doc).matches(here)


def choose_baseline(baselines: dict[str, dict[str, Any]], isa: str | None = None, threads: int | None = None,
                    vendor: str | None = None) -> tuple[str, dict[str, Any]]:
    """(name, baseline) to judge a run made on this float path (default this process's) with: the first made on
    the same path (or that did not record it), else the first of the same vendor and ISA, else the first of the
    same ISA, else the first given (on another path :func:`compare` gates the contrasts alone)."""
    if not baselines:
        raise ArtifactError("no baseline given; make one with `ddmbench baseline --why '...'`")
    here = this_path(isa, threads, vendor)
    for parts in (("vendor", "isa", "threads"), ("vendor", "isa"), ("isa",)):
        names = [name for name, doc in baselines.items() if path_of(doc).matches(here, parts)]
        if names:
            return names[0], baselines[names[0]]
    name = next(iter(baselines))
    return name, baselines[name]


def baseline_name(path: FloatPath) -> str:
    """Default file name of a baseline made on ``path``: ci-<vendor>-<isa>.json (ci-<isa>.json where the vendor
    is unknown)."""
    return f"ci-{path.vendor}-{path.isa}.json" if path.vendor else f"ci-{path.isa}.json"
