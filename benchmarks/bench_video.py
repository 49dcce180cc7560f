"""Video label propagation at MAST's test size: memory and time of
:func:`wsss_ext.propagate_labels` against the unfold + softmax method of
MAST's code (``wsss_ext.reference.propagate_labels_unfold``), same process,
same inputs, forward (test time).

The size: a 480p DAVIS frame (480 x 854, padded to 480 x 864) at MAST's
stride 4 gives a 120 x 216 feature map of 64 channels; radius 12 (625 taps
per reference, MAST's test window), 5 reference frames (MAST's test memory:
2 long-term + 3 short-term), one softmax over all 3125 candidates, 7 labels
(a DAVIS video's objects and background), batch 1.

The unfold method materialises, per call, the unfolded keys R x C x 625 x H
x W, the unfolded values R x L x 625 x H x W, the scores and their softmax
R x 625 x H x W (one of each), and the weighted values L x R x 625 x H x W
before the sum: at the test size 24.1 GiB (the keys alone 19.3 GiB) in
float32, before the copy einsum makes of the keys (the measured peak is
about twice the figure). Where twice that does not fit in the memory budget
(by default 1/4 of the memory available, so that a shared machine keeps
working) the case records the computed figure and both methods are
measured at the largest size on a ladder of smaller 16:9-ish maps that fits;
the reference's measured peak is also scaled up to the test size (it is
linear in H x W).

``--quick`` shrinks the maps 4 times in each side (a smoke test, not
results). Run alone, it prints the records and writes them as JSON under
``--out`` only::

    python benchmarks/bench_video.py --out /tmp/bench_video
"""

from __future__ import annotations

import torch

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import propagate_labels_unfold

KERNEL = "video"
CHANNELS, HEIGHT, WIDTH, RADIUS, REFERENCES, LABELS = 64, 120, 216, 12, 5, 7
# einsum copies the unfolded keys into a contiguous permuted operand, so the reference's peak runs to about
# twice the tensors it creates (the quick run measured 1.8x): a size fits if twice its figure fits the budget.
COPY_FACTOR = 2
# Smaller maps tried for the reference, largest first (heights; widths keep 9:5).
LADDER = (120, 96, 80, 64, 56, 48, 40, 32, 24, 16)


def unfold_bytes(refs: int, height: int, width: int, channels: int = CHANNELS, labels: int = LABELS,
                 radius: int = RADIUS, itemsize: int = 4) -> dict:
    """Bytes of the tensors the unfold + softmax method materialises in one call."""
    taps = (2 * radius + 1) ** 2
    cells = refs * taps * height * width
    parts = {
        "unfolded_keys": cells * channels,
        "unfolded_values": cells * labels,
        "scores_and_softmax": 2 * cells,
        "weighted_values": cells * labels,
    }
    return {name: count * itemsize for name, count in parts.items()} | {
        "total": sum(parts.values()) * itemsize}


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 * 2**30


def _inputs(height: int, width: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, CHANNELS, height, width, generator=generator) / 4).to(device)
    keys = (torch.randn(1, REFERENCES, CHANNELS, height, width, generator=generator) / 4).to(device)
    values = torch.softmax(torch.randn(1, REFERENCES, LABELS, height, width, generator=generator) * 3, 2).to(device)
    return query, keys, values


def _record(case: str, height: int, width: int, ours: dict) -> dict:
    return {
        "kernel": KERNEL,
        "case": case,
        "shape": [1, REFERENCES, CHANNELS, height, width],
        "params": {"radius": RADIUS, "labels": LABELS, "references": REFERENCES, "border": "zero (MAST)"},
        "ours": ours,
        "references": {},
        "ratios": {},
        "unfold_bytes_computed": unfold_bytes(REFERENCES, height, width),
    }


def run(device: str, quick: bool, memory_fraction: float = 0.25) -> list[dict]:
    """The test-size case (the reference run only if it fits) and, when it
    does not, the largest fitting size with both measured."""
    device = torch.device(device)
    scale = 4 if quick else 1
    height, width = HEIGHT // scale, WIDTH // scale
    budget = int(memory_fraction * _available_bytes(device))
    print(f"  [{KERNEL}] memory budget for the reference {budget / 2**30:.1f} GiB", flush=True)

    def ours_at(h: int, w: int, repeat: int):
        query, keys, values = _inputs(h, w, device)
        stats, out = measure(lambda: wsss_ext.propagate_labels(query, keys, values, RADIUS), device=device,
                             warmup=1, repeat=repeat)
        return stats, out, (query, keys, values)

    print(f"  [{KERNEL}/mast_test_size 1x{REFERENCES}x{CHANNELS}x{height}x{width}]", flush=True)
    ours, out, inputs = ours_at(height, width, repeat=3)
    test = _record("mast_test_size", height, width, ours)
    needed = test["unfold_bytes_computed"]["total"]
    records = [test]
    if COPY_FACTOR * needed <= budget:
        reference, expected = measure(lambda: propagate_labels_unfold(*inputs, RADIUS), device=device,
                                      warmup=0, repeat=1)
        test["references"]["unfold_softmax"] = reference
        test["ratios"]["unfold_softmax"] = ratios(ours, reference)
        test["max_abs_diff"] = float((out - expected).abs().max())
        print(f"    ours {ours['median_ms']:.1f} ms, reference {reference['median_ms']:.1f} ms", flush=True)
        return records
    test["references"]["unfold_softmax"] = {
        "skipped": f"needs {needed / 2**30:.1f} GiB (computed: its unfolded keys, values, scores, softmax and "
                   f"weighted values; about twice that at its peak), over the budget of {budget / 2**30:.1f} GiB"}
    print(f"    ours {ours['median_ms']:.1f} ms, peak {ours['peak_memory_bytes'] / 2**20:.0f} MiB; reference "
          f"needs {needed / 2**30:.1f} GiB: skipped", flush=True)
    del out, inputs

    for rung in LADDER:
        h, w = rung // scale, round(rung * WIDTH / HEIGHT) // scale
        if h < 4 or COPY_FACTOR * unfold_bytes(REFERENCES, h, w)["total"] > budget or h >= height:
            continue
        print(f"  [{KERNEL}/mast_largest_fitting 1x{REFERENCES}x{CHANNELS}x{h}x{w}]", flush=True)
        ours_small, out, inputs = ours_at(h, w, repeat=3)
        reference, expected = measure(lambda: propagate_labels_unfold(*inputs, RADIUS), device=device,
                                      warmup=1, repeat=2)
        record = _record("mast_largest_fitting", h, w, ours_small)
        record["references"]["unfold_softmax"] = reference
        record["ratios"]["unfold_softmax"] = ratios(ours_small, reference)
        record["max_abs_diff"] = float((out - expected).abs().max())
        if reference.get("peak_memory_bytes"):
            record["reference_peak_scaled_to_test_size_bytes"] = int(
                reference["peak_memory_bytes"] * (height * width) / (h * w))
        records.append(record)
        print(f"    ours {ours_small['median_ms']:.1f} ms, reference {reference['median_ms']:.1f} ms, "
              f"max |diff| {record['max_abs_diff']:.2e}", flush=True)
        break
    return records


if __name__ == "__main__":
    import argparse
    import json
    import os
    from pathlib import Path

    from common import device_name, device_slug, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-fraction", type=float, default=0.25,
                        help="share of the available memory the reference may take (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="folder for <device>-video.json (default: print only)")
    args = parser.parse_args()
    load_average = os.getloadavg()  # other processes skew CPU timings
    records = run(args.device, args.quick, args.memory_fraction)
    name = device_name(args.device)
    results = {"device": name, "quick": args.quick, "torch_version": torch.__version__,
               "torch_threads": torch.get_num_threads(), "load_average_at_start": load_average,
               "records": records}
    print(json.dumps(results, indent=1, default=str))
    if args.out is not None:
        path = args.out / f"{device_slug(name)}-video{'-quick' if args.quick else ''}.json"
        write_results(results, path)
        print(f"wrote {path}")
