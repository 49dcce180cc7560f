"""What a command that writes files says at the end, the same for every one."""

from __future__ import annotations

import sys

__all__ = ["report_outputs"]


def report_outputs(what: str, out, written: int, skipped: dict[str, str], world_size: int = 1) -> None:
    """``wrote N <what> to <out>`` on stdout, then each skipped file with why, by name, on stderr."""
    print(f"wrote {written} {what} to {out}" + (f" ({world_size} processes)" if world_size > 1 else ""))
    for name, why in sorted(skipped.items()):
        print(f"skipped {name}: {why}", file=sys.stderr)
