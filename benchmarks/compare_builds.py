"""Per-call overhead of two builds of wsss_ext, interleaved: the tiny calls
of ``bench_dispatch.py`` in one process per build, the builds taking turns
``--rounds`` times, each op's best per-call median over the rounds.

On a shared or throttled machine two runs minutes apart differ by up to 2x
for the same build (``run.py --only dispatch`` twice); taking turns, each
build sees the same machine, and SwAV's three-line recipe, the same code in
both, shows how equal the turns were. Usage::

    python benchmarks/compare_builds.py --before /path/to/old/target --after /path/to/new/target \
        --out benchmarks/results/dispatch-before-after.json

``--before`` / ``--after`` are folders that hold an importable ``wsss_ext``
(``pip install --target DIR .`` of a checkout); an empty ``--after`` means
the installed one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run in the child: each op's per-call time (us), the best of `samples`
# medians of 50-call loops, after a warm-up.
_CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import bench_dispatch
cases = bench_dispatch._tiny_cases(torch.device("cpu"))
calls = [(name, case[1]) for name, case in cases.items()]
calls.append(("swav_recipe", cases["sinkhorn_knopp"][2]["swav_recipe"]))
result = {}
for name, fn in calls:
    for _ in range(20):
        fn()
    medians = []
    for _ in range(int(sys.argv[2])):
        times = []
        for _ in range(15):
            start = time.perf_counter()
            for _ in range(50):
                fn()
            times.append((time.perf_counter() - start) / 50 * 1e6)
        medians.append(statistics.median(times))
    result[name] = min(medians)
print(json.dumps(result))
"""


def _one_run(folder: str, samples: int) -> dict:
    env = dict(os.environ)
    if folder:
        env["PYTHONPATH"] = folder + os.pathsep + env.get("PYTHONPATH", "")
    # cwd elsewhere: run from the repository, Python would import its source folder.
    done = subprocess.run([sys.executable, "-c", _CHILD, str(HERE), str(samples)], env=env, cwd=Path.home(),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="folder holding the older build's wsss_ext")
    parser.add_argument("--after", default="", help="folder holding the newer build (default: the installed one)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per build (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=7, help="medians per op and turn (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    runs = {"before": [], "after": []}
    load = os.getloadavg()
    for turn in range(args.rounds):
        for which, folder in (("before", args.before), ("after", args.after)):
            runs[which].append(_one_run(folder, args.samples))
            print(f"  turn {turn + 1}/{args.rounds}: {which} done", flush=True)
    ops = list(runs["after"][0])
    best = {which: {op: min(run[op] for run in runs[which]) for op in ops} for which in runs}
    print(f"\n{'op':>18}  {'before us':>10}  {'after us':>9}  {'before / after':>14}")
    for op in ops:
        print(f"{op:>18}  {best['before'][op]:10.1f}  {best['after'][op]:9.1f}  {best['before'][op] / best['after'][op]:13.2f}x")
    if args.out:
        record = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": load,
            "rounds": args.rounds,
            "samples": args.samples,
            "per_call_us": best,
            "ratio_before_over_after": {op: best["before"][op] / best["after"][op] for op in ops},
            "runs": runs,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
