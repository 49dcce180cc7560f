"""``wsss-ext info``: what this installation was built with."""

from __future__ import annotations

import json

NAME = "info"
HELP = "version, CUDA build, architectures, OpenMP threads, visible GPUs"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    from wsss_ext import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        print(f"{key:<{width}}  {value}")
    return 0
