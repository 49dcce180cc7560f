"""``wsss-ext refine``: CAM files (.npy) into palette PNG masks; torchrun shards the files."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "refine"
HELP = "refine CAMs into palette PNG masks"
DESCRIPTION = (
    "Refine CAMs into VOC-palette PNG masks. For every image <stem>.jpg|png in --images, --cams holds "
    "<stem>.npy: a float array C x h x w of the C foreground classes' CAMs (channel c is label c + 1, label 0 "
    "the background; all-zero channels are absent classes; any resolution). Bad or unmatched files are "
    "reported and skipped. Under torchrun each process refines every world_size-th file.")


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--cams", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chain", default="pamr,crf",
                        help="steps after the CAM, in order, among rw, pamr, crf (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="images of one size refined together")
    parser.add_argument("--overlays", action="store_true", help="also write <out>/overlays/<stem>.png")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from wsss_ext.distributed import init_from_env, shutdown
    from wsss_app.pipeline.files import refine_folder

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    rank, world_size, device = init_from_env(args.device)
    try:
        summary = refine_folder(args.images, args.cams, args.out, chain=args.chain, device=device,
                                batch_size=args.batch_size, overlays=args.overlays, rank=rank,
                                world_size=world_size, progress=not args.no_progress)
        summaries = [summary]
        if world_size > 1:
            import torch.distributed as dist

            summaries = [None] * world_size
            dist.all_gather_object(summaries, summary)
    finally:
        if world_size > 1:
            shutdown()
    if rank == 0:
        written = sum(len(s.written) for s in summaries)
        skipped = {name: why for s in summaries for name, why in s.skipped.items()}
        print(f"wrote {written} masks to {args.out}" + (f" ({world_size} processes)" if world_size > 1 else ""))
        for name, why in sorted(skipped.items()):
            print(f"skipped {name}: {why}", file=sys.stderr)
    return 0
