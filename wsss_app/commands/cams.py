"""``wsss-ext cams``: a trained run's multi-scale CAMs of a folder of images, as ``.npy`` files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsss_app.commands._report import report_outputs

NAME = "cams"
HELP = "a trained run's CAMs of images, one <stem>.npy each (what refine reads)"
DESCRIPTION = (
    "Write the CAMs of a run trained by `wsss-ext train` for every image of --images (a VOC root, a tags.csv "
    "folder, 'synthetic', or a plain folder of images): --out/<stem>.npy, a float32 array C x h x w over the "
    "run's C classes (channel c is label c + 1), each channel divided by its maximum and zero for a class the "
    "image is not tagged with: the format `wsss-ext refine --cams` reads. The tags come from the data; a plain "
    "folder of images gets every class. The method's cams() at its published scales and flips unless "
    "--scales / --no-flip say otherwise. Unreadable images are reported and skipped; under torchrun each "
    "process takes every world_size-th image.")


def add_arguments(parser) -> None:
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="RUN",
                        help="a run folder of wsss-ext train")
    parser.add_argument("--images", required=True, help="VOC root, tags.csv folder, image folder or 'synthetic'")
    parser.add_argument("--out", type=Path, required=True, help="folder for the <stem>.npy files")
    parser.add_argument("--split", help="VOC image list (default train_aug if present, else train)")
    parser.add_argument("--scales", help="comma-separated image scales (default: the method's, e.g. 1,0.5,1.5,2)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="add horizontally flipped images (default: the method's)")
    parser.add_argument("--stride", type=int, default=4,
                        help="store the CAMs at 1/stride of the image size (default 4; refine resizes them)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--scales must be comma-separated numbers, got {text!r}") from None
    if not scales or not all(0 < scale < 16 for scale in scales):
        raise ValueError(f"--scales must be positive (below 16), got {text!r}")
    return scales


def run(args) -> int:
    from wsss_app.pipeline.inference import gather_summaries, open_for_run, write_cams
    from wsss_app.pipeline.runs import load_run
    from wsss_ext.distributed import init_from_env, shutdown
    from wsss_ext.io import prepare_output_dir

    scales = parse_scales(args.scales)
    if args.stride < 1:
        raise ValueError(f"--stride must be >= 1, got {args.stride}")
    rank, world_size, device = init_from_env(args.device)
    try:
        method, config = load_run(args.run_dir, device)
        dataset = open_for_run(args.images, config, args.split)
        out = prepare_output_dir(args.out)
        summary = write_cams(method, dataset, out, scales=scales, flip=args.flip, stride=args.stride,
                             device=device, rank=rank, world_size=world_size, progress=not args.no_progress)
        summary = gather_summaries(summary, world_size)
    finally:
        if world_size > 1:
            shutdown()
    if rank == 0:
        report_outputs(f"CAMs of {config['method']}", args.out, len(summary.written),
                       {**dataset.skipped, **summary.skipped}, world_size)
        if dataset.layout == "images":
            print(f"{args.images} has no tags: every image has every class's CAM", file=sys.stderr)
    return 0
