"""Shared helpers of the benchmark scripts: timing, peak memory, device
description, and the JSON / PNG outputs.

Every ``bench_<kernel>.py`` next to this file exposes ``run(device, quick)``
returning a list of case records::

    {
        "kernel": "sinkhorn",
        "case": "swav",
        "shape": [4096, 3000],
        "params": {...},
        "ours": {"median_ms": ..., "min_ms": ..., "peak_memory_bytes": ...},
        "references": {"swav_recipe": {...}},   # or {"name": {"skipped": "why"}}
        "ratios": {"swav_recipe": {"time": ..., "peak_memory": ...}},
        "max_abs_diff": ...,
    }

``ratios`` are reference / ours, so values above 1 mean wsss_ext is faster or
smaller. ``run.py`` collects the records, prints them and calls
:func:`write_results` and :func:`plot_results`.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "device_name",
    "device_slug",
    "measure",
    "peak_memory",
    "plot_results",
    "ratios",
    "time_call",
    "write_results",
]


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 5, device: str | torch.device, min_total_s: float = 0.3
) -> dict:
    """Wall-clock time of ``fn()``.

    Runs ``warmup`` untimed calls (thread pools, CUDA context and caching
    allocator get set up there), then times at least ``repeat`` calls one by
    one, synchronising CUDA around each so that asynchronous kernels are
    counted. Fast calls are repeated until about ``min_total_s`` seconds have
    been timed, so that millisecond cases get a stable median.

    Returns:
        ``{"median_ms": ..., "min_ms": ..., "repeats": ...}`` over the timed calls.
    """
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times_ms: list[float] = []
    while len(times_ms) < repeat or (sum(times_ms) < min_total_s * 1e3 and len(times_ms) < 1000):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "repeats": len(times_ms)}


def _proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _release_free_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak_rss() -> bool:
    """Set the process's peak RSS (VmHWM) back to its current RSS (Linux >= 4.0),
    after giving the memory that glibc keeps for reuse back to the OS, so that
    reusing it later raises the RSS again. False if ``/proc`` cannot do it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            _release_free_heap()
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: str | torch.device) -> int | None:
    """Peak memory that ``fn()`` adds on top of what was allocated before it.

    On CUDA: the caching allocator's peak of allocated bytes during the call,
    minus the bytes allocated before. On CPU: the process's peak resident set
    size (VmHWM, reset through ``/proc/self/clear_refs``) minus its resident
    size before the call, after trimming the C heap so that blocks freed
    earlier and reused by the call are counted. It includes every page the
    call touches (its output too). Tensors above glibc's mmap threshold (at
    most 32 MiB) are mapped one by one and counted exactly; smaller ones come
    from the heap, whose fragmentation can add to the figure.

    Returns:
        Bytes, or ``None`` on CPU when ``/proc`` cannot be used (not Linux, or
        ``clear_refs`` is not writable).
    """
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        if not _reset_peak_rss():
            return None
        before = _proc_status_bytes("VmRSS")
    except OSError:
        return None
    fn()
    # The kernel's RSS counters are approximate, which can put a call that
    # allocates nothing a little below zero.
    return max(0, _proc_status_bytes("VmHWM") - before)


def measure(
    fn: Callable[[], Any], *, device: str | torch.device, warmup: int = 1, repeat: int = 5
) -> tuple[dict, Any]:
    """Time ``fn()`` and take its peak memory.

    Short cases are timed in steady state (after ``warmup`` calls, with the
    C heap as the calls left it), then measured for memory in one more call:
    trimming the heap for the memory reading would otherwise make every timed
    call page its temporaries in again. Long cases (``warmup=0, repeat=1``)
    take both from their single run.

    Returns:
        ``({"median_ms", "min_ms", "repeats", "peak_memory_bytes"}, output)``,
        ``output`` being what the last call returned, to check results without
        running ``fn`` again.
    """
    outputs = []

    def call():
        # Drop the previous output first: every call then starts from the
        # baseline that peak_memory measured.
        outputs.clear()
        outputs.append(fn())

    if warmup == 0 and repeat == 1:
        timing = {}
        peak = peak_memory(lambda: timing.update(time_call(call, warmup=0, repeat=1, device=device)), device)
    else:
        timing = time_call(call, warmup=warmup, repeat=repeat, device=device)
        outputs.clear()
        peak = peak_memory(call, device)
    return {**timing, "peak_memory_bytes": peak}, outputs[0]


def ratios(ours: dict, reference: dict) -> dict:
    """Reference / ours for time and peak memory (> 1: wsss_ext is faster /
    smaller); memory only where both were measured."""
    result = {"time": reference["median_ms"] / ours["median_ms"]}
    if ours.get("peak_memory_bytes") and reference.get("peak_memory_bytes") is not None:
        result["peak_memory"] = reference["peak_memory_bytes"] / ours["peak_memory_bytes"]
    return result


def device_name(device: str | torch.device) -> str:
    """Human-readable name of ``device``: the GPU's name, or the CPU model and
    its number of logical cores."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def device_slug(name: str) -> str:
    """File-name-safe form of a device name: ``"NVIDIA H100 80GB HBM3"`` ->
    ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def write_results(results: dict, path: str | os.PathLike) -> None:
    """Write ``results`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def plot_results(results: dict | str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Bar chart of the timings in ``results`` (a dict or a JSON file from
    :func:`write_results`), one panel per kernel.

    Each case is a group of horizontal bars, wsss_ext first and then each
    reference, on a log time axis; reference bars are annotated with
    reference time / wsss_ext time.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    records = results["records"]
    kernels = list(dict.fromkeys(record["kernel"] for record in records))
    implementations = ["wsss_ext"] + list(
        dict.fromkeys(name for record in records for name in record["references"])
    )
    colors = {name: f"C{index}" for index, name in enumerate(implementations)}

    panels = [[record for record in records if record["kernel"] == kernel] for kernel in kernels]
    heights = [1.0 + 0.45 * sum(1 + len(record["references"]) for record in panel) for panel in panels]
    figure, axes = plt.subplots(
        len(kernels), 1, figsize=(10, sum(heights) + 0.8), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for axis, kernel, panel in zip(axes[:, 0], kernels, panels):
        _plot_kernel(axis, kernel, panel, colors)

    date = results.get("date", datetime.date.today().isoformat())[:10]
    figure.suptitle(f"wsss_ext benchmarks on {results.get('device', '?')}, {date}", fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in colors.values()]
    figure.legend(handles, list(colors), loc="lower center", ncol=len(colors), frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=120)
    plt.close(figure)


def _plot_kernel(axis, kernel: str, records: list[dict], colors: dict) -> None:
    """One panel of :func:`plot_results`: grouped bars of a kernel's cases."""
    bar_height = 0.8
    position = 0.0
    ticks, tick_labels, all_times = [], [], []
    for record in records:
        bars = [("wsss_ext", record["ours"])] + list(record["references"].items())
        start = position
        for name, stats in bars:
            if "median_ms" in stats:
                time_ms = stats["median_ms"]
                all_times.append(time_ms)
                axis.barh(position, time_ms, height=bar_height, color=colors[name])
                label = f" {_format_ms(time_ms)}"
                ratio = record.get("ratios", {}).get(name, {}).get("time")
                if ratio is not None:
                    label += f"  (wsss_ext {_format_speedup(ratio)})"
                axis.text(time_ms, position, label, va="center", fontsize=8)
            else:
                # At the left edge of the axes: a skipped bar has no length.
                axis.text(
                    0, position, f" {name}: skipped", va="center", fontsize=8, transform=axis.get_yaxis_transform()
                )
            position += 1
        ticks.append((start + position - 1) / 2)
        shape = "x".join(str(size) for size in record["shape"])
        tick_labels.append(f"{record['case']}\n{shape}")
        position += 0.6  # gap between cases
    axis.set_xscale("log")
    if all_times:
        # Room on the right for the annotations.
        axis.set_xlim(min(all_times) / 2, max(all_times) * 25)
    axis.set_yticks(ticks, tick_labels)
    # Inverted, first case at the top; set explicitly since skipped bars draw nothing.
    axis.set_ylim(position - 1.0, -0.6)
    axis.set_xlabel("time per call (ms, log scale)")
    axis.set_title(
        f"{kernel}: wsss_ext vs plain-PyTorch references (speed-up = reference / wsss_ext time)", fontsize=10
    )
    axis.grid(axis="x", which="both", alpha=0.3)


def _format_ms(time_ms: float) -> str:
    return f"{time_ms / 1e3:.2f} s" if time_ms >= 1e3 else f"{time_ms:.1f} ms"


def _format_speedup(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
