"""Runs a slice of the fuzz cases in this process (started by test_fuzz.py).

Prints ``CASE <id>`` before each case (flushed, so that a crash names it),
then ``DONE <outcome> <id> <detail>``, and at the end ``END``.

    python tests/fuzz/runner.py --seed 0 --per-op 30 --start 0 --stop 200
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from cases import make_cases  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-op", type=int, default=30)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cases = make_cases(args.seed, args.per_op)
    for case in cases[args.start : args.stop]:
        print(f"CASE {case.id}", flush=True)
        try:
            outcome, detail = case.run()
        except Exception as error:  # noqa: BLE001 - reported, not raised
            outcome, detail = "unexpected", f"{type(error).__name__}: {str(error)[:200]}"
        print(f"DONE {outcome} {case.id} {detail}".replace("\n", " "), flush=True)
    print("END", flush=True)


if __name__ == "__main__":
    main()
