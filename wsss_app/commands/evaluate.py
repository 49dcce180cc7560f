"""``wsss-ext evaluate``: confusion matrix, per-class IoU and mIoU of PNG masks against ground truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "evaluate"
HELP = "mIoU of PNG masks against ground truth (VOC evaluation)"


def add_arguments(parser) -> None:
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--gt", type=Path, required=True)
    parser.add_argument("--ignore-index", type=int, default=255)
    parser.add_argument("--n-classes", type=int, default=None,
                        help="1 to 256 (masks are uint8 PNGs); default: the largest label seen + 1")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from wsss_app.pipeline.files import check_n_classes, evaluate_folders

    check_n_classes(args.n_classes, "--n-classes")
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
