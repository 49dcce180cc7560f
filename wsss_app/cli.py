"""The ``wsss-ext`` command.

    wsss-ext demo          the papers' comparison on a built-in synthetic set: several WSSS methods, each
                           CAM -> refinement chains -> mIoU, time, memory, figure; --real: real photos;
                           --task video: a tiny MAST tracker against copying the first mask (J&F)
    wsss-ext train         train a WSSS method on tagged images (VOC, a tags.csv folder); resumes; torchrun: DDP
    wsss-ext cams          a trained run's multi-scale CAMs of images as <stem>.npy, the files refine reads
    wsss-ext pseudo-labels a trained run's own pseudo-masks (palette PNGs); mIoU when the data has masks
    wsss-ext refine        refine your CAMs (.npy) into palette PNG masks; torchrun shards the files
    wsss-ext evaluate      confusion matrix, per-class IoU and mIoU of PNG masks against ground truth
    wsss-ext track         propagate a first-frame mask through a folder of video frames; J&F with --gt
    wsss-ext methods       the registered methods: key, paper, the wsss_ext kernels each runs
    wsss-ext info          what this installation was built with
"""

from __future__ import annotations

import argparse
import sys

from wsss_app.commands import cams, demo, evaluate, info, methods, pseudo_labels, refine, track, train

# Sub-commands in --help order; each module holds NAME, HELP, add_arguments and run.
COMMANDS = (demo, train, cams, pseudo_labels, refine, evaluate, track, methods, info)

# The errors a command raises for a user's mistake: printed as one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsss-ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.NAME, help=command.HELP,
                                    description=getattr(command, "DESCRIPTION", command.HELP))
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"wsss-ext {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: files in flight are already cleaned up by wsss_ext.io.atomic_write.
        print(f"wsss-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
