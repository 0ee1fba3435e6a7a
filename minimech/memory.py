"""Why a full activation cache used to cost a third more than a forward pass on CPU, and the knob that fixes it.

A forward pass frees its intermediate tensors as it goes, so the C allocator (glibc's malloc on Linux) hands the same
memory back to the next tensor: no new pages. A cache keeps every activation (800 MiB for GPT-2 small at 8 x 128
tokens), so each run needs that much *fresh* memory, and when the previous cache is dropped glibc returns most of it
to the operating system (it trims the heap beyond 2 x the mmap threshold, and tensors above the threshold get their
own mappings). The next run then page-faults all of it in again, and the kernel zeroes every page: measured here,
that was the entire gap between a cached and a plain forward (benchmarks/forward.py, ratios to HF's forward:
1.32x -> 0.91x at 8 x 128, 1.88x -> 1.31x at 1 x 1024).

`keep_freed_memory()` asks glibc to keep freed memory for reuse instead (mallopt: tensors up to 32 MiB from the heap,
heap trimmed only beyond 2 GiB free). The process keeps up to that much memory after a cache is dropped, for the next
one, as PyTorch's CUDA allocator does on a GPU. `run_with_cache` turns it on the first time it runs; set the
environment variable MINIMECH_KEEP_FREED_MEMORY=0 (or call keep_freed_memory(False)) to leave malloc alone.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
DEFAULTS = 128 * 1024  # glibc's own defaults for both (before its dynamic adjustment)

_state: dict = {"asked": False, "enabled": False}


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; AttributeError elsewhere)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(enabled: bool = True) -> bool:
    """Keep (True) or return (False) memory that freed tensors leave; returns whether malloc accepted it."""
    _state["asked"] = True
    libc = _glibc()
    if libc is None:
        return False
    mmap, trim = (MMAP_THRESHOLD, TRIM_THRESHOLD) if enabled else (DEFAULTS, DEFAULTS)
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap))) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        ctypes.c_int(trim)))
    _state["enabled"] = ok and enabled
    return ok


def keeping_freed_memory() -> bool:
    """Whether keep_freed_memory(True) is in effect in this process."""
    return _state["enabled"]


def default_on_first_cache() -> None:
    """Called by run_with_cache: turn the knob on once, unless the user chose (env var or an earlier call)."""
    if _state["asked"]:
        return
    if os.environ.get("MINIMECH_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["asked"] = True
        return
    keep_freed_memory(True)
