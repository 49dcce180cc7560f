"""The fuzz suite: every case of cases.py run in child processes, a chunk of
cases per child, so that a crash (SIGSEGV, abort) or a hang fails the case it
happened in instead of the test run; the chunk then resumes after it.

Counts are printed and written as JSON to $WSSS_FUZZ_REPORT when set. The
test fails on any crash, hang, NaN, mismatch, unexpected exception, accepted
bad input or error that does not name the argument."""

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

SEED = int(os.environ.get("WSSS_FUZZ_SEED", "0"))
PER_OP = int(os.environ.get("WSSS_FUZZ_PER_OP", "200"))
CHUNKS = 4
CHUNK_TIMEOUT_S = 240


def _run_chunk(start: int, stop: int) -> list[tuple[str, str, str]]:
    """(outcome, case id, detail) for cases [start, stop), restarting after a crash."""
    from cases import make_cases

    ids = [case.id for case in make_cases(SEED, PER_OP)]
    results = []
    while start < stop:
        command = [sys.executable, str(HERE / "runner.py"), "--seed", str(SEED), "--per-op", str(PER_OP),
                   "--start", str(start), "--stop", str(stop)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=CHUNK_TIMEOUT_S, env=env)
            output, returncode = child.stdout, child.returncode
        except subprocess.TimeoutExpired as expired:
            output, returncode = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (
                expired.stdout or ""), "timeout"
        done = set()
        last = None
        for line in output.splitlines():
            if line.startswith("CASE "):
                last = line[5:]
            elif line.startswith("DONE "):
                outcome, case_id, *detail = line[5:].split(" ", 2)
                results.append((outcome, case_id, detail[0] if detail else ""))
                done.add(case_id)
        if output.rstrip().endswith("END") and returncode == 0:
            break
        # The child died (or hung) in case `last`: record it, go on after it.
        if last is None or last in done:
            results.append(("crash", f"chunk@{start}", f"child exited {returncode} outside a case"))
            break
        kind = "hang" if returncode == "timeout" else "crash"
        results.append((kind, last, f"child exited {returncode}"))
        start = ids.index(last) + 1
    return results


def test_fuzz_suite():
    from cases import make_cases

    cases = make_cases(SEED, PER_OP)
    categories = collections.Counter(case.category for case in cases)
    began = time.monotonic()
    bounds = [round(i * len(cases) / CHUNKS) for i in range(CHUNKS + 1)]
    results = []
    for start, stop in zip(bounds, bounds[1:]):
        results += _run_chunk(start, stop)
    elapsed = time.monotonic() - began
    outcomes = collections.Counter(outcome for outcome, _, _ in results)
    report = {
        "seed": SEED, "cases": len(cases), "run": sum(1 for o, c, _ in results if not c.startswith("chunk@")),
        "categories": len(categories), "by_category": dict(sorted(categories.items())),
        "outcomes": dict(outcomes), "crashes": outcomes["crash"], "hangs": outcomes["hang"], "nan": outcomes["nan"],
        "mismatches": outcomes["mismatch"], "seconds": round(elapsed, 1),
        "failures": [r for r in results if r[0] != "ok"][:50],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "by_category"}, indent=1))
    if os.environ.get("WSSS_FUZZ_REPORT"):
        Path(os.environ["WSSS_FUZZ_REPORT"]).write_text(json.dumps(report, indent=1))
    assert report["run"] == len(cases), report
    assert outcomes["ok"] == len(cases), report["failures"]


@pytest.mark.parametrize("kind", ["segv"])
def test_a_crash_names_its_case(kind, tmp_path, monkeypatch):
    """The harness itself: a child that dies in a case reports that case."""
    fake = tmp_path / "runner.py"
    fake.write_text("import os, signal, sys\nprint('CASE first', flush=True)\nprint('DONE ok first ', flush=True)\n"
                    "print('CASE second', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(sys.modules[__name__], "HERE", tmp_path)
    monkeypatch.setattr("cases.make_cases", lambda seed, per_op: [type("C", (), {"id": i})() for i in
                                                                  ("first", "second")])
    results = _run_chunk(0, 2)
    assert results[0] == ("ok", "first", "") and results[1][:2] == ("crash", "second")
