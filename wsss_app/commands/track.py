"""``wsss-ext track``: propagate a first-frame mask through a folder of frames."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "track"
HELP = "propagate a first-frame mask through a folder of video frames"
DESCRIPTION = (
    "Propagate the first frame's object mask through a video. --frames holds the frames as JPEG / PNG files "
    "in name order; --first-mask is the first frame's label map (a palette PNG, 0 background, 1..K the "
    "objects, as DAVIS stores it; or an RGB image in VOC's colours). Writes one VOC-palette PNG per frame, "
    "<out>/<stem>.png. Unreadable frames are reported by name and skipped; frames of different sizes are an "
    "error. With --gt, prints DAVIS's J, F and J&F against <gt>/<stem>.png (first and last frames left out). "
    "Without --checkpoint the network has random weights (train one with `wsss-ext demo --task video`).")


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=Path, required=True, help="folder of the video's frames")
    parser.add_argument("--first-mask", type=Path, required=True, help="label map of the first frame")
    parser.add_argument("--out", type=Path, required=True, help="folder for the masks")
    parser.add_argument("--method", default=None,
                        help="video method (default: the checkpoint's, else mast)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help='torch.save file of {"method", "overrides", "state_dict"}')
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gt", type=Path, default=None, help="folder of ground-truth PNGs <stem>.png to score")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from wsss_app.pipeline.tracking import track_folder

    summary = track_folder(args.frames, args.first_mask, args.out, method=args.method, checkpoint=args.checkpoint,
                           device=args.device, gt_dir=args.gt, progress=not args.no_progress)
    for name, why in sorted(summary.skipped.items()):
        print(f"skipped {name}: {why}", file=sys.stderr)
    weights = f"weights from {args.checkpoint}" if summary.trained else (
        "UNTRAINED: random weights, no --checkpoint given; the masks show the pipeline, not the method")
    print(f"{summary.method} ({weights})")
    print(f"tracked {summary.n_objects} object(s) through {len(summary.written)} frames in {summary.seconds:.1f} s; "
          f"wrote {len(summary.written)} masks to {args.out}")
    if summary.scores is not None:
        scores = summary.scores
        print(f"J&F {100 * scores['J&F']:.1f}  J {100 * scores['J']:.1f}  F {100 * scores['F']:.1f}  "
              f"(DAVIS 2017 semi-supervised: {scores['objects']} objects, {scores['frames_scored']} frames scored, "
              f"first and last left out)")
        if scores["missing_gt"]:
            print(f"no ground truth for {len(scores['missing_gt'])} frames: {', '.join(scores['missing_gt'][:5])}"
                  + (" ..." if len(scores["missing_gt"]) > 5 else ""), file=sys.stderr)
    return 0
