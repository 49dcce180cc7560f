"""``wsss-ext methods``: the registered methods, their papers and kernels."""

from __future__ import annotations

import json

NAME = "methods"
HELP = "the registered methods, their papers and kernels"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    from python_models import METHODS

    rows = [{"key": key, "class": cls.__name__, "paper": cls.PAPER, "kernels": list(cls.KERNELS)}
            for key, cls in sorted(METHODS.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        print(f"{row['key']:<{width}}  {', '.join(row['kernels']) or '-':<32}  {row['paper']}")
    return 0
