"""Run the wsss_ext benchmarks and save the results.

Runs every ``bench_<kernel>.py`` in this folder, prints a table, and writes
``<out>/<device>.json`` and ``<out>/<device>.png``::

    python benchmarks/run.py                      # CUDA if available, else CPU
    python benchmarks/run.py --device cpu --only sinkhorn
    python benchmarks/run.py --quick --out /tmp/bench   # smoke test, ~8x smaller
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bench modules import common

import wsss_ext  # noqa: E402
from common import device_name, device_slug, plot_results, write_results  # noqa: E402


def discover() -> dict[str, Path]:
    """Kernel name -> path of its ``bench_<kernel>.py`` in this folder."""
    return {path.stem[len("bench_") :]: path for path in sorted(HERE.glob("bench_*.py"))}


def load_bench(name: str, path: Path):
    """Import a bench module by file path, whatever the current directory."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mb(num_bytes: int | None) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 2**20:.1f}"


def format_table(records: list[dict]) -> str:
    """One row per (case, reference): times, speed-up, peak memory, max |diff|."""
    header = ("case", "shape", "ours ms", "reference", "ref ms", "speed-up", "ours MiB", "ref MiB", "max |diff|")
    rows = []
    for record in records:
        ours = record["ours"]
        diff = record.get("max_abs_diff")
        for name, ref in record["references"].items():
            if "skipped" in ref:
                ref_columns = ("skipped", "-", "-", "-")
            else:
                ref_columns = (
                    f"{ref['median_ms']:.1f}",
                    f"{record['ratios'][name]['time']:.2f}x",
                    _mb(ref["peak_memory_bytes"]),
                    "-" if diff is None else f"{diff:.2e}",
                )
            ref_ms, speedup, ref_mb, diff_text = ref_columns
            rows.append(
                (
                    f"{record['kernel']}/{record['case']}",
                    "x".join(map(str, record["shape"])),
                    f"{ours['median_ms']:.1f}",
                    name,
                    ref_ms,
                    speedup,
                    _mb(ours["peak_memory_bytes"]),
                    ref_mb,
                    diff_text,
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _earlier_records(path: Path, rerun_kernels: set[str]) -> list[dict]:
    """The records of the other kernels in an earlier results file, so that
    ``--only`` updates one kernel's results without dropping the rest."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    kept = [record for record in earlier.get("records", []) if record["kernel"] not in rerun_kernels]
    for record in kept:
        record.setdefault("date", earlier.get("date"))
    return kept


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    benches = discover()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=_default_device(), help="default: cuda if available"
    )
    parser.add_argument("--quick", action="store_true", help="~8x smaller problems: a smoke test, not results")
    parser.add_argument("--only", nargs="+", choices=sorted(benches), metavar="KERNEL", help=f"among {sorted(benches)}")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "run.py: --device cuda requested but torch sees no CUDA GPU; use --device cpu\n")

    name = device_name(args.device)
    # Other processes on the machine skew CPU timings; the load average tells afterwards.
    load_average = os.getloadavg()
    print(
        f"wsss_ext {wsss_ext.__version__} on {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load_average[0]:.2f}"
    )
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    records = []
    for kernel in args.only or sorted(benches):
        print(f"{kernel}:", flush=True)
        for record in load_bench(kernel, benches[kernel]).run(args.device, args.quick):
            records.append({**record, "date": date})

    print()
    print(format_table(records))
    # A smoke run never overwrites the real results of the same device.
    stem = args.out / (device_slug(name) + ("-quick" if args.quick else ""))
    kept = _earlier_records(stem.with_suffix(".json"), {record["kernel"] for record in records})
    results = {
        "device": name,
        "device_type": args.device,
        "date": date,
        "quick": args.quick,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average,
        "build_info": wsss_ext.build_info(),
        "records": kept + records,
    }
    write_results(results, stem.with_suffix(".json"))
    plot_results(results, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
