"""The ``wsss-ext`` command.

    wsss-ext info          what this installation was built with
"""

from __future__ import annotations

import argparse
import json
import sys


def _print_info(as_json: bool) -> int:
    from wsss_ext import build_info

    info = build_info()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsss-ext", description="wsss_ext: kernels for weakly- and "
                                     "self-supervised semantic segmentation")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, CUDA build, architectures, OpenMP threads, visible GPUs")
    info.add_argument("--json", action="store_true", help="print as JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _print_info(args.json)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
