"""``wsss-ext refine``: CAM files (.npy) into palette PNG masks; torchrun shards the files."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss_app.commands._report import report_outputs

NAME = "refine"
HELP = "refine CAMs into palette PNG masks"
DESCRIPTION = (
    "Refine CAMs into VOC-palette PNG masks. For every image <stem>.jpg|png in --images, --cams holds "
    "<stem>.npy: a float array C x h x w of the C foreground classes' CAMs (channel c is label c + 1, label 0 "
    "the background; all-zero channels are absent classes; any resolution). Bad or unmatched files are "
    "reported and skipped. Under torchrun each process refines every world_size-th file.")


def _dilations(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 1,2,4,8,12,24, got {text!r}")


def add_arguments(parser) -> None:
    from wsss_app.pipeline.chains import PRESETS

    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--cams", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chain", default="pamr,crf",
                        help="steps after the CAM, in order, among rw, pamr, crf (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="images of one size refined together")
    parser.add_argument("--overlays", action="store_true", help="also write <out>/overlays/<stem>.png")
    parser.add_argument("--no-progress", action="store_true")
    settings = parser.add_argument_group(
        "refinement settings",
        "Default: published settings for VOC-sized photos (PSA's CRF: gaussian 3/3, bilateral 80/13/10, 10 "
        "iterations; 1-stage-wseg's PAMR; IRNet's walk: beta 10, 256 steps, radius 5, background 0.25; CAM "
        "background 0.25). --preset takes one paper's; each flag below overrides it. Spatial widths are in "
        "pixels: on images much smaller than ~500 x 375, scale the sxy values down with them.")
    settings.add_argument("--preset", choices=sorted(PRESETS), default=None,
                          help="a paper's settings (wsss_app.pipeline.chains.PRESETS names each source): "
                               "affinitynet (psa), irnet (irn), puzzle_cam, seam, recurseed")
    # dest run_dir: the parser's "run" is each command's entry point.
    settings.add_argument("--run", dest="run_dir", type=Path, default=None, metavar="RUN",
                          help="a `wsss-ext train` run folder: the walk uses its trained boundary (IRNet) or "
                               "affinity (AffinityNet) network; otherwise the image-gradient fallback")
    for flag, kind, what in (
        ("--crf-iters", int, "CRF mean-field iterations"),
        ("--crf-gaussian-sxy", float, "CRF smoothness kernel width (pixels)"),
        ("--crf-gaussian-weight", float, "CRF smoothness kernel weight"),
        ("--crf-bilateral-sxy", float, "CRF appearance kernel width (pixels)"),
        ("--crf-bilateral-srgb", float, "CRF appearance kernel colour width"),
        ("--crf-bilateral-weight", float, "CRF appearance kernel weight"),
        ("--pamr-iters", int, "PAMR iterations"),
        ("--pamr-dilations", _dilations, "PAMR dilations, comma-separated"),
        ("--walk-beta", float, "random-walk affinity exponent"),
        ("--walk-steps", int, "random-walk steps"),
        ("--walk-radius", int, "random-walk neighbourhood radius (cells of the walk's grid)"),
        ("--walk-bg-threshold", float, "constant background score after the walk (IRNet's rule)"),
        ("--walk-bg-power", float, "background (1 - max)^power walked with the classes (PSA's rule)"),
        ("--bg-threshold", float, "constant background score of the CAMs"),
        ("--bg-power", float, "background (1 - max)^power of the CAMs instead of a constant"),
    ):
        settings.add_argument(flag, type=kind, default=None, help=what)


def chain_settings_of(args):
    """The ``ChainSettings`` of the parsed arguments: --preset (or the published
    defaults) with every flag given overriding it."""
    from wsss_app.pipeline.chains import OPTIONS, chain_settings

    return chain_settings(args.preset, **{name: getattr(args, name, None) for name in OPTIONS})


def walk_of_run(args, device):
    """The walk source of --run (None without one, or for a run with no trained
    walk network) and the line saying which affinities the walk uses."""
    from wsss_app.pipeline.walks import ImageGradientWalk, walk_of

    walk = None
    if getattr(args, "run_dir", None) is not None:
        from wsss_app.pipeline.runs import load_run

        method, _ = load_run(args.run_dir, device)
        walk = walk_of(method)
    source = walk.name if walk is not None else ImageGradientWalk().name
    return walk, f"random walk: {source}"


def run(args) -> int:
    from wsss_app.pipeline.files import refine_folder
    from wsss_ext.distributed import gather_objects, init_from_env, shutdown

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    from wsss_app.pipeline.chains import parse_chain
    from wsss_ext.io import prepare_output_dir

    prepare_output_dir(args.out, "--out")  # a bad --out fails before a run is loaded or a job joined

    settings = chain_settings_of(args)
    rank, world_size, device = init_from_env(args.device)
    try:
        walk, walk_line = walk_of_run(args, device)
        if rank == 0 and "rw" in parse_chain(args.chain):
            print(walk_line)
        summary = refine_folder(args.images, args.cams, args.out, chain=args.chain, device=device,
                                batch_size=args.batch_size, overlays=args.overlays, rank=rank,
                                world_size=world_size, progress=not args.no_progress, settings=settings,
                                walk=walk)
        summaries = gather_objects(summary, world_size)
    finally:
        if world_size > 1:
            shutdown()
    if rank == 0:
        report_outputs("masks", args.out, sum(len(s.written) for s in summaries),
                       {name: why for s in summaries for name, why in s.skipped.items()}, world_size)
    return 0
