"""Time and peak memory of one call, for the demo's and the benchmarks' tables."""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["timed"]


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Set the peak RSS (VmHWM) back to the current RSS (Linux >= 4.0), after
    handing the heap glibc keeps for reuse back to the OS (so that reusing it
    counts again). False where ``/proc`` cannot do it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[Any, float, int | None]:
    """``fn()``'s result, its wall time in seconds and the memory it added at its peak.

    On CUDA the peak is the caching allocator's allocated bytes above those
    allocated before the call (synchronised around it). On CPU it is the
    process's peak resident set above its resident set before (every page the
    call touched, its output included), ``None`` where Linux's ``/proc`` is not
    available. One call gives both numbers; a first call that sets up thread
    pools is counted, as a user running the command once would see it.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - before
    measured = _reset_peak_rss()
    before = _status_bytes("VmRSS") if measured else 0
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    # The kernel's RSS counters are approximate: a call that allocates nothing may read a little below zero.
    return result, seconds, max(0, _status_bytes("VmHWM") - before) if measured else None
