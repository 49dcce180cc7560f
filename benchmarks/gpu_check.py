"""The first thing to run on a lent GPU machine: build, CUDA tests,
compute-sanitizer, GPU benchmarks, one JSON summary. Within 8 minutes on an
H100/H200 with 16 cores.

    python benchmarks/gpu_check.py                 # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --dry-run       # here: every step up to where a GPU is needed

The machine reaches no package registry, so the build is
``pip install --no-build-isolation --no-deps .`` against the torch (with CUDA),
scikit-build-core and pybind11 already there, for the GPU's own architecture
only (one ``-real`` target compiles in a fraction of the all-architecture
time). Then, each with its own time budget:

1. ``pytest`` on every test whose id names ``cuda`` (the device-parametrised
   kernel tests and the sync-debug checks of tests/test_compile.py);
2. ``compute-sanitizer`` with memcheck, racecheck and synccheck over
   ``benchmarks/gpu_sanitize_pass.py`` (a small forward and backward pass of
   every op, sized to cross tile and warp edges);
3. ``benchmarks/run.py --device cuda`` (every kernel against its reference).

Writes ``<out>/gpu-check-<device>.json`` (each step's command, exit status,
seconds and output tail) beside the benchmark results; commit both. A step
that fails does not stop the later ones: the summary says which passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")


def _gpu_arch() -> str | None:
    """The first GPU's compute capability as CMake wants it ("90"), from nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True)
    first = out.stdout.strip().splitlines()[:1]
    return first[0].replace(".", "").strip() + "-real" if out.returncode == 0 and first else None


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = Path(root or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.exists():
            return str(candidate)
    return None


def _run(name: str, command: list[str], budget_s: int, env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run one step with a wall-clock budget; never raises."""
    print(f"== {name}: {' '.join(command)}  (budget {budget_s} s)", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=budget_s)
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = "timeout"
        output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
    except OSError as error:
        returncode, output = "not run", str(error)
    seconds = round(time.monotonic() - start, 1)
    print(output[-3000:], flush=True)
    print(f"== {name}: {returncode} in {seconds} s", flush=True)
    return {"step": name, "command": command, "returncode": returncode, "seconds": seconds,
            "output_tail": output[-6000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: check the tools and run the CPU side of each step, build nothing")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default: %(default)s)")
    parser.add_argument("--skip-build", action="store_true", help="wsss_ext is already installed with CUDA")
    args = parser.parse_args(argv)
    python = sys.executable
    steps = []
    arch = _gpu_arch()
    sanitizer = _sanitizer()
    facts = {"gpu_arch": arch, "compute_sanitizer": sanitizer, "nvcc": shutil.which("nvcc"),
             "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "dry_run": args.dry_run}
    print(json.dumps(facts), flush=True)

    if args.dry_run:
        # Everything a GPU is not needed for: the sanitizer pass on the CPU backend,
        # the test selection, the benchmark driver's smoke run.
        steps.append(_run("sanitize pass on CPU", [python, str(HERE / "gpu_sanitize_pass.py"), "--device", "cpu"], 120,
                          cwd=Path("/tmp")))
        steps.append(_run("CUDA test selection", [python, "-m", "pytest", "--collect-only", "-q", "-k", "cuda",
                                                  str(ROOT / "tests")], 120, cwd=Path("/tmp")))
        steps.append(_run("benchmark driver (quick, CPU)", [python, str(HERE / "run.py"), "--quick", "--device", "cpu",
                                                            "--only", "sinkhorn", "--out", "/tmp/gpu_check_dry"], 300))
    else:
        if not args.skip_build:
            env = {"WSSS_EXT_CUDA": "1", "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 8)}
            if arch:
                env["WSSS_EXT_CUDA_ARCHS"] = arch
            steps.append(_run("build", [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                                        "."], 300, env=env))
        # From /tmp so that the installed package, not the source tree, is imported.
        steps.append(_run("CUDA tests", [python, "-m", "pytest", "-q", "-x", "-k", "cuda", "-p", "no:cacheprovider",
                                         str(ROOT / "tests")], 150, cwd=Path("/tmp")))
        for tool in SANITIZER_TOOLS:
            if sanitizer is None:
                steps.append({"step": f"compute-sanitizer {tool}", "returncode": "not run",
                              "output_tail": "compute-sanitizer not found (CUDA_HOME/bin or PATH)"})
                continue
            steps.append(_run(f"compute-sanitizer {tool}",
                              [sanitizer, "--tool", tool, "--error-exitcode", "1", python,
                               str(HERE / "gpu_sanitize_pass.py"), "--device", "cuda"], 90, cwd=Path("/tmp")))
        steps.append(_run("GPU benchmarks", [python, str(HERE / "run.py"), "--device", "cuda", "--out",
                                             str(args.out)], 240))

    passed = all(step["returncode"] == 0 for step in steps)
    summary = {**facts, "passed": passed, "steps": steps}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu-check-dry-run.json" if args.dry_run else "gpu-check.json")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'passed' if passed else 'FAILED'}: " + ", ".join(f"{s['step']}={s['returncode']}" for s in steps))
    print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
