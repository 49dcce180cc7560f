"""The ``wsss-ext`` command.

    wsss-ext demo          the pseudo-label stage on a built-in synthetic dataset: trains a CAM classifier,
                           refines its CAMs with every chain, reports mIoU, timings and a figure
    wsss-ext refine        refine your CAMs (.npy) into palette PNG masks; torchrun shards the files
    wsss-ext evaluate      confusion matrix, per-class IoU and mIoU of PNG masks against ground truth
    wsss-ext methods       the registered methods: key, paper, the wsss_ext kernels each runs
    wsss-ext info          what this installation was built with
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def _print_methods(as_json: bool) -> int:
    from python_models import METHODS

    rows = [{"key": key, "class": cls.__name__, "paper": cls.PAPER, "kernels": list(cls.KERNELS)}
            for key, cls in sorted(METHODS.items())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        print(f"{row['key']:<{width}}  {', '.join(row['kernels']) or '-':<32}  {row['paper']}")
    return 0


def _demo(args) -> int:
    from wsss_app.pipeline.demo import print_summary, run_demo

    report = run_demo(args.out, device=args.device, preset=args.preset, progress=not args.no_progress)
    print_summary(report)
    print(f"wrote {args.out}/report.json, report.md and figure.png")
    return 0


def _refine(args) -> int:
    from wsss_ext.distributed import init_from_env, shutdown
    from wsss_app.pipeline.files import refine_folder

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


def _evaluate(args) -> int:
    from wsss_app.pipeline.files import evaluate_folders

    result = evaluate_folders(args.pred, args.gt, args.n_classes, args.ignore_index)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['images']} images, {result['n_classes']} classes")
    for label, iou in enumerate(result["per_class_iou"]):
        print(f"  class {label:3d}  IoU {'  n/a' if iou is None else f'{iou:5.1f}'}")
    print(f"mIoU {result['miou']:.2f}")
    if result["missing_predictions"]:
        print(f"{len(result['missing_predictions'])} ground-truth files have no prediction", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsss-ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the pseudo-label stage on a built-in synthetic dataset (no download)")
    demo.add_argument("--out", type=Path, default=Path("wsss_demo"), help="report folder (default: %(default)s)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    demo.add_argument("--preset", choices=("default", "tiny"), default="default",
                      help="tiny: a seconds-long smoke run whose numbers mean nothing")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    refine = commands.add_parser(
        "refine", help="refine CAMs into palette PNG masks",
        description="Refine CAMs into VOC-palette PNG masks. For every image <stem>.jpg|png in --images, "
                    "--cams holds <stem>.npy: a float array C x h x w of the C foreground classes' CAMs (channel c "
                    "is label c + 1, label 0 the background; all-zero channels are absent classes; any "
                    "resolution). Bad or unmatched files are reported and skipped. Under torchrun each process "
                    "refines every world_size-th file.")
    refine.add_argument("--images", type=Path, required=True)
    refine.add_argument("--cams", type=Path, required=True)
    refine.add_argument("--out", type=Path, required=True)
    refine.add_argument("--chain", default="pamr,crf",
                        help="steps after the CAM, in order, among rw, pamr, crf (default: %(default)s)")
    refine.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    refine.add_argument("--batch-size", type=int, default=8, help="images of one size refined together")
    refine.add_argument("--overlays", action="store_true", help="also write <out>/overlays/<stem>.png")
    refine.add_argument("--no-progress", action="store_true")

    evaluate = commands.add_parser("evaluate", help="mIoU of PNG masks against ground truth (VOC evaluation)")
    evaluate.add_argument("--pred", type=Path, required=True)
    evaluate.add_argument("--gt", type=Path, required=True)
    evaluate.add_argument("--ignore-index", type=int, default=255)
    evaluate.add_argument("--n-classes", type=int, default=None, help="default: the largest label seen + 1")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    methods = commands.add_parser("methods", help="the registered methods, their papers and kernels")
    methods.add_argument("--json", action="store_true", help="print as JSON")
    info = commands.add_parser("info", help="version, CUDA build, architectures, OpenMP threads, visible GPUs")
    info.add_argument("--json", action="store_true", help="print as JSON")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "refine":
            if args.batch_size < 1:
                parser.error("--batch-size must be >= 1")
            return _refine(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "methods":
            return _print_methods(args.json)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"wsss-ext {args.command}: {error}", file=sys.stderr)
        return 2
    return _print_info(args.json)


if __name__ == "__main__":
    sys.exit(main())
