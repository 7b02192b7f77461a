"""What this machine's CPU can do: the instruction-set flags that make bf16 pay on a CPU.

bf16 autocast on a CPU without AVX512-BF16 or AMX runs, but through slow emulation; a profile that asks for
it there should stop with one line instead of running several times slower than fp32.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one gives native bf16 matmuls (AMX tiles are the fast path)


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (Linux); None where the file or the key does not exist."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where that file does not exist."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has native bf16 matmuls (``avx512_bf16`` or ``amx_bf16``)."""
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def cpu_bf16_refusal(key: str, flags: frozenset[str] | None = None) -> str | None:
    """None when bf16 on this CPU pays; else the one-line reason naming ``key`` and the fix."""
    if cpu_has_bf16(flags):
        return None
    return (f"{key}: bf16 on this CPU ({platform.machine() or 'unknown'}) has none of the flags "
            f"{', '.join(BF16_FLAGS)}, so it would run emulated and slower than fp32; use 32-true here "
            "(bf16 pays on CPUs with AVX512-BF16/AMX and on GPUs)")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``, else the architecture."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def vector_isa(flags: frozenset[str] | None = None) -> str:
    """The widest x86 vector extension oneDNN/ATen kernels pick on this CPU (``amx``, ``avx512``, ``avx2``), else
    the architecture: CPUs with the same one take the same float paths, so same-seed runs reproduce bit for bit."""
    flags = cpu_flags() if flags is None else flags
    for isa, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    return platform.machine() or "unknown"


def machine_fingerprint() -> dict[str, str | int]:
    """What decides a same-seed run's floating-point results: the CPU's vector ISA, its model, torch's version
    and its intra-op thread count (1 vs 2 threads trained another evaluator from the same seed: measured in
    docs/regression-gate.md)."""
    import torch

    return {"isa": vector_isa(), "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}
