"""Every OpenMP kernel of wsss_ext under CPU contention (issue 20): each case
timed with 1 thread and with 2 threads (``torch.set_num_threads``, which the
kernels follow), first on an idle machine, then beside a busy process that
this benchmark starts and pins to the last CPU, as a training process or a
DataLoader worker next to the CRF would be.

Work split in equal static shares waits at the next barrier for the share of
the thread the busy process has descheduled; the kernels hand their work out
in small blocks instead, so the thread on the free core takes most of them.
The requirement: with the busy process running, 2 threads are never slower
than 1 (``ratios.busy_1_thread`` = busy time with 1 thread / busy time with
2, >= 1). Each record also gives both idle times. CPU only; the numbers
depend on the machine's core count (the busy process takes one of them) and
load.

Cases, the benchmarks' own shapes or shrunk to keep each call under a second:
``dense_crf`` (one VOC image; 32 SEC maps of 41 x 41), ``pamr`` (16 x 21 x
81 x 81), ``random_walk`` (IRNet's 94 x 125, 21 labels), ``propagation``
(MAST, 5 references, 60 x 107), ``sinkhorn`` (SwAV's 4096 x 3000),
``fickle`` (forward + backward of 16 x 512 x 41 x 41), ``correlation``
(forward + backward, 4 x 64 x 48 x 64, radius 4).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import torch
import torch.nn.functional as F

import wsss_ext
from bench_dense_crf import AFFINITYNET, SEC_SCALE, cam_like_unary, photos
from common import ratios

KERNEL = "contention"


def _busy(stop) -> None:
    """Spin on the last CPU until ``stop`` is set."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    while not stop.is_set():
        for _ in range(100_000):
            pass


class _BusyProcess:
    """A process spinning on one CPU for the duration of a ``with`` block."""

    def __enter__(self):
        import bench_contention  # by import name: run.py loads this file under another module object

        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.process = context.Process(target=bench_contention._busy, args=(self.stop,), daemon=True)
        self.process.start()
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()


def _interleaved(fn, repeat: int) -> dict:
    """{threads: timing} for 1 and 2 threads, the calls alternating so that a
    change of the machine's load hits both alike."""
    times = {1: [], 2: []}
    for threads in (1, 2):  # warm-up: thread pools, caches
        torch.set_num_threads(threads)
        fn()
    for _ in range(repeat):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fn()
            times[threads].append((time.perf_counter() - start) * 1e3)
    return {threads: {"median_ms": statistics.median(t), "min_ms": min(t), "repeat": repeat,
                      "peak_memory_bytes": None}
            for threads, t in times.items()}


def _cases(quick: bool) -> dict:
    """name -> (call, repeats) on ready inputs."""
    shrink = 4 if quick else 1
    g = torch.Generator().manual_seed(0)
    cases = {}

    voc_image, voc_unary = photos(1, 375 // shrink, 500 // shrink), cam_like_unary(1, 21, 375 // shrink, 500 // shrink)
    cases["dense_crf_voc"] = (lambda: wsss_ext.dense_crf(voc_unary, voc_image, 10, **AFFINITYNET), 9)
    sec = {**AFFINITYNET, "gaussian_sxy": 3.0 / SEC_SCALE, "bilateral_sxy": 80.0 / SEC_SCALE}
    sec_image, sec_unary = photos(32 // shrink, 41, 41), cam_like_unary(32 // shrink, 21, 41, 41)
    cases["dense_crf_sec"] = (lambda: wsss_ext.dense_crf(sec_unary, sec_image, 10, **sec), 9)

    image = torch.rand(16 // shrink, 3, 81, 81, generator=g)
    mask = torch.softmax(3 * torch.randn(16 // shrink, 21, 81, 81, generator=g), 1)
    cases["pamr"] = (lambda: wsss_ext.pamr(image, mask, (1, 2, 4, 8, 12, 24), 10, 0.1), 9)

    cams = torch.rand(1, 21, 94 // shrink, 125 // shrink, generator=g)
    affinity = wsss_ext.boundary_affinity(torch.rand(1, 1, 94 // shrink, 125 // shrink, generator=g).pow(4))
    cases["random_walk"] = (lambda: wsss_ext.random_walk(cams, affinity, 10.0, 256), 9)

    query = torch.randn(1, 64, 60, 107, generator=g) / 4
    keys = torch.randn(1, 5, 64, 60, 107, generator=g) / 4
    values = torch.softmax(torch.randn(1, 5, 7, 60, 107, generator=g) * 3, 2)
    cases["propagation"] = (lambda: wsss_ext.propagate_labels(query, keys, values, 12), 9)

    scores = torch.randn(4096 // shrink, 3000, generator=g)
    cases["sinkhorn"] = (lambda: wsss_ext.sinkhorn_knopp(scores, 0.05, 3), 9)

    x = torch.relu(torch.randn(16 // shrink, 512, 41, 41, generator=g)).requires_grad_()
    weight = (torch.randn(20, 512, 3, 3, generator=g) / (3 * 512**0.5)).requires_grad_()
    bias = torch.zeros(20, requires_grad=True)

    def fickle_step():
        x.grad = weight.grad = bias.grad = None
        wsss_ext.fickle_conv2d(x, weight, bias, p=0.9, seed=1).mean().backward()

    cases["fickle"] = (fickle_step, 5)

    in1 = torch.randn(4, 64, 48, 64, generator=g).requires_grad_()
    in2 = torch.randn(4, 64, 48, 64, generator=g).requires_grad_()

    def correlation_step():
        in1.grad = in2.grad = None
        out = wsss_ext.correlation(in1, in2, kernel_size=1, patch_size=9)
        out.backward(torch.ones_like(out))

    cases["correlation"] = (correlation_step, 9)
    return cases


def _timings(cases: dict, label: str) -> dict:
    """name -> {threads: timing} for 1 and 2 threads (torch.set_num_threads)."""
    out = {}
    previous = torch.get_num_threads()
    try:
        for name, (fn, repeat) in cases.items():
            out[name] = _interleaved(fn, repeat)
            print(f"    {label:>5} {name:<14} 1 thread {out[name][1]['median_ms']:8.1f} ms, "
                  f"2 threads {out[name][2]['median_ms']:8.1f} ms", flush=True)
    finally:
        torch.set_num_threads(previous)
    return out


def run(device: str, quick: bool) -> list[dict]:
    """Every case idle and beside a busy process; ``quick`` shrinks them.
    Returns one record per case (CPU only: other devices get none)."""
    if torch.device(device).type != "cpu":
        return []
    print(f"  [{KERNEL}] {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    cases = _cases(quick)
    idle = _timings(cases, "idle")
    with _BusyProcess():
        busy = _timings(cases, "busy")
    records = []
    for name in cases:
        records.append({
            "kernel": KERNEL,
            "case": name,
            "shape": [],
            "params": {"busy_process_cpu": max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
            # "ours" is the contended 2-thread time; "references" the other three.
            "ours": busy[name][2],
            "references": {"busy_1_thread": busy[name][1], "idle_1_thread": idle[name][1],
                           "idle_2_threads": idle[name][2]},
            # time / the contended 2-thread time: busy_1_thread >= 1 is the requirement.
            "ratios": {"busy_1_thread": ratios(busy[name][2], busy[name][1]),
                       "idle_1_thread": ratios(busy[name][2], idle[name][1]),
                       "idle_2_threads": ratios(busy[name][2], idle[name][2])},
            "two_threads_not_slower_under_contention": busy[name][2]["median_ms"] <= busy[name][1]["median_ms"],
        })
    return records


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    if args.only:
        _all = _cases
        _cases = lambda quick: {k: v for k, v in _all(quick).items() if k in args.only}  # noqa: E731
    result = run("cpu", args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
