"""Keep freed memory in a CPU process, so each training step does not fault its pages in again.

A training step allocates and frees the same large activations every iteration. glibc's
malloc serves blocks above its mmap threshold (128 KiB at first, adapting up to 32 MiB) with
a fresh ``mmap`` and unmaps them on free, and it trims the top of its heap whenever more
than its trim threshold is free there; so every step the kernel zero-fills and maps those
pages again, one fault per page. Raising both thresholds lets freed blocks stay in the heap
for the next step: the same effect that the jemalloc/tcmalloc preloads of PyTorch's CPU
performance guides have, without a preload. The price: the process keeps its peak memory
until it exits instead of giving it back between steps.

The benchmarks call :func:`retain_freed_memory` so that the candidates they compare run
under the same malloc setting (the in-process sections' candidates all share it; the
network section's workers take it or leave it per candidate). Training itself does not
call it: a user sets the same thing for the trial processes through glibc's own
environment tunables in the spec's ``env_vars``
(``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, both ``"2147483647"``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int: blocks below 2 GiB come from the heap and stay there

_applied = False


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse in this process (see the module's text).

    Idempotent; a no-op where the C library is not glibc.

    Returns:
        Whether the setting is in effect.
    """
    global _applied
    if _applied:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    except (OSError, AttributeError):  # no usable libc: leave malloc alone
        return False
    return _applied
