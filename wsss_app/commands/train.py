"""``wsss-ext train``: train a registered WSSS method on tagged images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "train"
HELP = "train a WSSS method on tagged images (VOC, a tags.csv folder, or synthetic)"
DESCRIPTION = (
    "Train a registered WSSS method (wsss-ext methods) on image-level tags: --data is a PASCAL VOC 2012 folder "
    "(JPEGImages/, Annotations/, ImageSets/Segmentation/), a folder of images with tags.csv (file name, class "
    "names), or 'synthetic'. Writes --out/config.json, checkpoint.pt (every epoch, atomically), log.csv and "
    "log.json; --resume continues from the last checkpoint with the result of an uninterrupted run. Under "
    "torchrun it trains with DistributedDataParallel (gloo on the CPU, NCCL on CUDA), each process taking its "
    "share of every batch. Unset settings take the method's published recipe. The second stages (affinitynet, "
    "irnet, sec, dsrg) need --cam-run, a trained CAM run on the same classes: its CAMs of the training images "
    "give their labels (sec / dsrg: localisation cues, the background where every CAM is low instead of the "
    "papers' saliency), and for affinitynet / irnet its backbone their initial weights when the architectures "
    "match.")

# The settings --resume reads from the run; a different value on the command line is an error.
_RUN_SETTINGS = {"method": "method", "epochs": "epochs", "batch_size": "batch_size", "image_size": "image_size",
                 "seed": "seed", "batch_norm": "batch_norm", "split": "split"}


def add_arguments(parser) -> None:
    parser.add_argument("--method", help="a WSSS method key (wsss-ext methods); with --resume, the run's")
    parser.add_argument("--data", help="VOC root, tags.csv folder or 'synthetic'; with --resume, the run's")
    parser.add_argument("--out", type=Path, required=True, help="the run folder")
    parser.add_argument("--split", help="VOC image list (default train_aug if present, else train)")
    parser.add_argument("--epochs", type=int, help="default: the method's published count, else 5")
    parser.add_argument("--batch-size", type=int, help="images per optimizer step over all processes "
                                                       "(default: the method's, else 16)")
    parser.add_argument("--image-size", type=int, help="training images are resized to S x S "
                                                       "(default: the method's crop size, else 512)")
    parser.add_argument("--lr", type=float, help="base learning rate (default: the method's published one, "
                                                 "else AdamW at 1e-3)")
    parser.add_argument("--backbone", help="backbone name, e.g. tiny, resnet50 (default: the method's, or for "
                                           "a second stage the CAM run's)")
    parser.add_argument("--cam-run", type=Path, help="affinitynet / irnet / sec / dsrg: the trained CAM run whose "
                                                     "CAMs give their training labels; with --resume, the run's")
    parser.add_argument("--previous-round", type=Path, metavar="RUN",
                        help="simple_does_it: the previous round's run, whose network's labels of the boxes (dense "
                             "CRF, box rules) are this round's targets and whose weights it starts from; with "
                             "--resume, the run's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the method's DEFAULTS (VALUE as JSON, else a string); repeatable")
    parser.add_argument("--batch-norm", choices=("local", "sync", "frozen"),
                        help="BatchNorm statistics under torchrun (default: sync on CUDA, local on the CPU)")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="image-loading worker processes (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_sets(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def _resumed_config(args) -> dict:
    from wsss_app.pipeline.runs import CHECKPOINT, read_config

    config = read_config(args.out)
    given = {"method": args.method, "epochs": args.epochs, "batch_size": args.batch_size,
             "image_size": args.image_size, "seed": args.seed, "batch_norm": args.batch_norm, "split": args.split}
    clashes = [f"--{flag.replace('_', '-')} {value} (the run has {config[_RUN_SETTINGS[flag]]})"
               for flag, value in given.items() if value is not None and value != config[_RUN_SETTINGS[flag]]]
    if args.lr is not None and args.lr != config["optimizer"]["lr"]:
        clashes.append(f"--lr {args.lr} (the run has {config['optimizer']['lr']})")
    if args.backbone or args.set:
        clashes.append("--backbone/--set (the run's method is fixed)")
    if clashes:
        raise ValueError(f"--resume continues {args.out} with its own settings; drop {', '.join(clashes)}")
    if args.cam_run is not None and Path(args.cam_run).resolve() != Path(config.get("cam_run") or "").resolve():
        raise ValueError(f"--resume: the run's CAM run is {config.get('cam_run')}, not {args.cam_run}; "
                         f"drop --cam-run")
    if args.previous_round is not None and (
            Path(args.previous_round).resolve() != Path(config.get("previous_round") or "").resolve()):
        raise ValueError(f"--resume: the run's previous round is {config.get('previous_round')}, not "
                         f"{args.previous_round}; drop --previous-round")
    if not (args.out / CHECKPOINT).is_file():
        raise FileNotFoundError(f"--resume: {args.out} has no {CHECKPOINT} yet (no epoch finished); "
                                f"rerun without --resume to start it afresh")
    return config


def run(args) -> int:
    from wsss_app.pipeline.datasets import open_dataset
    from wsss_app.pipeline.runs import CHECKPOINT
    from wsss_app.pipeline.train_loop import check_trainable, new_run_config, train_run
    from wsss_ext.distributed import init_from_env, shutdown

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.resume:
        config = _resumed_config(args)
        if args.data is not None and str(args.data) != config["data"] and Path(args.data).resolve() != Path(
                config["data"]):
            raise ValueError(f"--resume: the run trained on {config['data']}, not {args.data}")
    else:
        if not args.method or not args.data:
            raise ValueError("--method and --data are required (unless --resume)")
        # A config without a checkpoint is a run that never finished an epoch: starting afresh loses nothing.
        if (args.out / CHECKPOINT).exists():
            raise ValueError(f"{args.out} already holds a run; --resume continues it, or choose another --out")
        from wsss_app.pipeline.second_stage import SECOND_STAGE

        second = args.method in SECOND_STAGE
        if args.cam_run is not None and not second:
            raise ValueError(f"--cam-run is for the second stages {list(SECOND_STAGE)}, not {args.method!r}")
        boxed = args.method in _BOX_KEYS
        if args.previous_round is not None and not boxed:
            raise ValueError(f"--previous-round is for {sorted(_BOX_KEYS)}'s later rounds, not {args.method!r}")
        check_trainable(args.method, _extra_keys(args.method) if args.cam_run is not None
                        else _BOX_KEYS.get(args.method, ()),
                        hint="pass --cam-run <a trained CAM run> to derive them from its CAMs")  # before any data
        overrides = _parse_sets(args.set)
    rank, world_size, device = init_from_env(args.device)
    try:
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(device)
        if args.resume:
            dataset = open_dataset(config["data"], config["split"], classes=config["classes"], decode=True)
            if len(dataset) != config["images"] and rank == 0:
                print(f"note: {config['data']} now has {len(dataset)} usable images, the run started with "
                      f"{config['images']}: the resumed run will differ from an uninterrupted one", file=sys.stderr)
        else:
            dataset = open_dataset(args.data, args.split, decode=True)
            if boxed and not dataset.has_boxes:
                check_trainable(args.method, hint=f"its boxes come from a VOC folder's Annotations (<bndbox>); "
                                                  f"{dataset.root} has none")
            extra_config = {}
            if args.cam_run is not None:
                from wsss_app.pipeline.second_stage import (
                    open_cam_run,
                    second_stage_overrides,
                )

                _, cam_config = open_cam_run(args.cam_run, dataset)
                size = args.image_size or check_trainable(args.method, _extra_keys(args.method)).DEFAULTS.get(
                    "crop_size", 512)
                overrides = second_stage_overrides(args.method, cam_config, size, overrides,
                                                   backbone_given=bool(args.backbone))
                extra_config = {"cam_run": str(Path(args.cam_run).resolve())}
            if args.previous_round is not None:
                previous = _previous_round_config(args.previous_round, args.method, dataset)
                overrides = {**previous["overrides"], **overrides}  # its architecture, so its weights load
                extra_config = {"previous_round": str(Path(args.previous_round).resolve()),
                                "round": previous.get("round", 1) + 1}
            config = new_run_config(args.method, dataset, epochs=args.epochs, batch_size=args.batch_size,
                                    image_size=args.image_size, lr=args.lr, seed=args.seed or 0,
                                    backbone=args.backbone, batch_norm=args.batch_norm, overrides=overrides,
                                    world_size=world_size, device=device,
                                    extra_keys=_extra_keys(args.method) if args.cam_run is not None
                                    else _BOX_KEYS.get(args.method, ()),
                                    extra_config=extra_config)
        if rank == 0:
            _report_dataset(dataset)
            if world_size > 1 and config["batch_norm"] == "local":
                print("note: BatchNorm statistics are per process (--batch-norm local); --batch-norm frozen "
                      "(or sync on CUDA) makes the result equal one process's", file=sys.stderr)
        extras, init = _second_stage(config, dataset, device, rank)
        flippers = None
        if config["method"] in _BOX_KEYS:
            extras, flippers, init = _box_extras(config, dataset, device, rank)
        result = train_run(args.out, config, dataset, resume=args.resume, device=device, rank=rank,
                           world_size=world_size, workers=args.workers, progress=not args.no_progress,
                           extras=extras, init=init, flippers=flippers)
    finally:
        if world_size > 1:
            shutdown()
    if rank == 0:
        print(f"trained {config['method']} for {result['epochs']} epochs ({result['steps']} steps"
              + (f", {world_size} processes" if world_size > 1 else "")
              + f"); last epoch's loss {result['loss']:.4f}; run in {args.out}")
    return 0


# Methods trained on boxes (round 1 of Simple Does It: its initial labels of the VOC boxes).
_BOX_KEYS = {"simple_does_it": ("boxes", "box_classes", "targets")}


def _previous_round_config(run, method: str, dataset) -> dict:
    """The previous round's config, checked: a run of the same method on the dataset's classes, with a checkpoint."""
    from wsss_app.pipeline.runs import CHECKPOINT, read_config

    config = read_config(run)
    if config["method"] != method:
        raise ValueError(f"--previous-round {run} is a {config['method']} run, not {method}")
    if list(config["classes"]) != list(dataset.classes):
        raise ValueError(f"--previous-round {run} was trained on the classes {list(config['classes'])}, not the "
                         f"dataset's {list(dataset.classes)}")
    if not (Path(run) / CHECKPOINT).is_file():
        raise FileNotFoundError(f"--previous-round {run} has no {CHECKPOINT} (no epoch finished)")
    return config


def _box_extras(config: dict, dataset, device: str = "cpu", rank: int = 0):
    """The boxes and their classes of every image at the training size, the
    round's targets, the flips of the boxes (x0, x1 mirrored; classes
    unchanged), and the initialisation. Round 1's targets are the method's
    ``initial_labels`` of the boxes; a later round's (``previous_round`` in
    the config) are the previous round's ``pseudo_labels`` of the training
    images (its probabilities, the dense CRF, the box rules), and it starts
    from that round's weights (Simple Does It retrains on each round's
    output; continuing from the last network rather than from ImageNet is
    this package's choice: no pretrained weights are at hand)."""
    import torch

    from wsss_app.pipeline.runs import build_method, load_run
    from wsss_app.pipeline.train_loop import resized_images

    size = config["image_size"]
    boxes, classes = dataset.boxes(size)
    init = None
    if not config.get("previous_round"):
        targets = build_method(config).initial_labels(boxes, classes, (size, size))
    else:
        previous, _ = load_run(config["previous_round"], device)
        images = resized_images(dataset, size)
        tags, batch = dataset.tags(), config["batch_size"]
        parts = []
        for start in range(0, len(images), batch):
            pixels = torch.stack([images[i][1] for i in range(start, min(start + batch, len(images)))])
            rows = slice(start, start + len(pixels))
            parts.append(previous.pseudo_labels(pixels.to(device), tags[rows].to(device), boxes[rows].to(device),
                                                classes[rows].to(device)).cpu())
        targets = torch.cat(parts)
        if rank == 0:
            print(f"round {config.get('round', 2)} targets of {len(images)} images from the previous round "
                  f"{config['previous_round']}")

        def init(method) -> None:
            method.load_state_dict(previous.state_dict())

    def mirror(rows):
        return torch.stack([size - rows[..., 2], rows[..., 1], size - rows[..., 0], rows[..., 3]], -1)

    return ({"boxes": boxes, "box_classes": classes, "targets": targets},
            {"boxes": mirror, "box_classes": lambda rows: rows}, init)


def _extra_keys(method: str) -> tuple[str, ...]:
    """The batch keys a second stage's CAM run provides."""
    from python_models import METHODS

    return tuple(name for name in METHODS[method].BATCH_KEYS
                 if name in ("affinity_labels", "ir_labels", "seeds", "cams"))


def _second_stage(config: dict, dataset, device: str, rank: int):
    """(extras, init) of a run with a ``cam_run``: the CAM run's labels of every
    training image and the backbone copy; (None, None) for other runs."""
    if not config.get("cam_run"):
        return None, None
    from wsss_app.pipeline.second_stage import (
        SEEDED,
        adopt_backbone,
        cam_run_extras,
        open_cam_run,
    )
    from wsss_app.pipeline.train_loop import resized_images

    cam_method, _ = open_cam_run(config["cam_run"], dataset, device)
    keys = _extra_keys(config["method"])
    map_size = None
    if config["method"] in SEEDED:  # seeds at the network's output size
        from wsss_app.pipeline.runs import build_method

        map_size = build_method(config).map_size(config["image_size"], config["image_size"])
    extras = cam_run_extras(config["method"], cam_method, resized_images(dataset, config["image_size"]),
                            dataset.tags(), batch_size=config["batch_size"], device=device, map_size=map_size)
    extras = {name: value for name, value in extras.items() if name in keys}
    if rank == 0:
        print(f"{config['method']} labels of {len(dataset)} images from the CAMs of the CAM run "
              f"{config['cam_run']}")

    def init(method) -> None:
        line = adopt_backbone(method, cam_method)
        if rank == 0:
            print(line)

    return extras, init


def _report_dataset(dataset) -> None:
    print(dataset.describe())
    for name, why in sorted(dataset.skipped.items()):
        print(f"skipped {name}: {why}", file=sys.stderr)
