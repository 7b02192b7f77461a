"""glibc's malloc told to keep freed memory for the next tensor instead of handing it back to the kernel.

Torch's CPU tensors come from plain ``malloc``. glibc serves a block above its mmap threshold (128 KiB at
start, raised on the fly up to 32 MiB) with fresh ``mmap`` pages, and returns the top of the heap to the
kernel once 128 KiB of it is free (the trim threshold). Either way, the next activation of that size is
page-faulted and zeroed again, at every layer of every call. The small nets here allocate and free a few MB
per layer, so this costs more than the arithmetic in many of their element-wise ops. Measured on the 2-core
AMD EPYC (docs/speed.md): the unet-xs training step, the
dense-policy Lipschitz pass and the 250-row forward all run faster, with bit-identical results, since only
where a buffer lives changes (torch aligns every buffer to 64 bytes either way).

:func:`keep_freed_memory` sets the mmap threshold to glibc's 32 MiB ceiling (tensors above it are still
mapped and unmapped) and the trim threshold to 2 GiB, so the heap stays at its peak size: it is reused, and it
stops shrinking between calls. Peak RSS grew little where measured (a 250-state Lipschitz pass 2.58 -> 2.69 GB,
10,000 top-2 samples in ``ddmbench bench`` 1.03 -> 1.04 GiB). It is set once per process, by
the ``ddmbench`` command and by each ``repro --jobs`` worker, on Linux with glibc; elsewhere (musl, macOS)
nothing happens. ``DDMBENCH_MALLOC=default`` leaves glibc's defaults, for comparison.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1        # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1   # mallopt takes an int: free heap top kept up to 2 GiB
OPT_OUT = "DDMBENCH_MALLOC"


def uses_glibc() -> bool:
    """Whether this process runs on glibc, asked of the C library in use (``platform.libc_ver`` instead
    guesses by searching the interpreter's binary file for version strings)."""
    try:
        return sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # no such name (macOS), or a C library that does not answer it (musl)
        return False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring). Returns whether both
    were set: False off glibc or with ``DDMBENCH_MALLOC=default``."""
    if os.environ.get(OPT_OUT, "").lower() == "default" or not uses_glibc():
        return False
    libc = ctypes.CDLL(None)  # this process's own C library
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
