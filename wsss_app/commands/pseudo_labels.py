"""``wsss-ext pseudo-labels``: a trained run's own pseudo-label rule over a dataset, as palette PNGs."""

from __future__ import annotations

from pathlib import Path

from wsss_app.commands._report import report_outputs

NAME = "pseudo-labels"
HELP = "a trained run's pseudo-masks of tagged images (palette PNGs), mIoU if the data has masks"
DESCRIPTION = (
    "Write the pseudo-masks of a run trained by `wsss-ext train`, by the method's own rule (CAM: IRNet's "
    "confident labels; SSSS: its PAMR pseudo-GT; FickleNet: its sampled Grad-CAMs; ...), for every image of "
    "--data (a VOC root, a tags.csv folder or 'synthetic'), with the data's tags: --out/<stem>.png, VOC-palette "
    "PNGs (0 background, c + 1 for class c of the run, 255 ignored). If the data has masks, prints the mIoU "
    "against them. Unreadable images are reported and skipped; under torchrun each process takes every "
    "world_size-th image.")


def add_arguments(parser) -> None:
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, metavar="RUN",
                        help="a run folder of wsss-ext train")
    parser.add_argument("--data", required=True, help="VOC root, tags.csv folder or 'synthetic'")
    parser.add_argument("--out", type=Path, required=True, help="folder for the <stem>.png masks")
    parser.add_argument("--split", help="VOC image list (default train_aug if present, else train)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from wsss_app.pipeline.inference import gather_summaries, open_for_run, write_pseudo_labels
    from wsss_app.pipeline.runs import load_run
    from wsss_ext.distributed import init_from_env, shutdown
    from wsss_ext.io import prepare_output_dir
    from wsss_ext.metrics import iou_from_confusion, mean_iou

    rank, world_size, device = init_from_env(args.device)
    try:
        method, config = load_run(args.run_dir, device)
        dataset = open_for_run(args.data, config, args.split)
        if dataset.layout == "images":
            raise ValueError(f"{args.data} has no tags (tags.csv or VOC Annotations/): pseudo-labels need them")
        out = prepare_output_dir(args.out)
        summary = write_pseudo_labels(method, dataset, out, device=device, rank=rank, world_size=world_size,
                                      progress=not args.no_progress)
        summary = gather_summaries(summary, world_size)
    finally:
        if world_size > 1:
            shutdown()
    if rank == 0:
        report_outputs(f"pseudo-masks of {config['method']}", args.out, len(summary.written),
                       {**dataset.skipped, **summary.skipped}, world_size)
        if summary.confusion is not None and summary.confusion.sum() > 0:
            iou = iou_from_confusion(summary.confusion)
            names = ["background", *config["classes"]]
            share = summary.ignored_pixels / max(summary.truth_pixels, 1)
            print(f"mIoU {100 * mean_iou(summary.confusion):.2f} against the data's masks"
                  + (f", over the {100 * (1 - share):.1f}% of their pixels the pseudo-masks label (the rest are "
                     f"255, ignored)" if summary.ignored_pixels else ""))
            for name, value in zip(names, iou.tolist()):
                print(f"  {name:<16} IoU {'  n/a' if value != value else f'{100 * value:5.1f}'}")
    return 0
