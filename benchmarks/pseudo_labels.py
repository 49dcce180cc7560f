"""What the walk and PAMR methods are for, measured: each method's
pseudo-masks against the CAM seeds it starts from, on the demo's synthetic
dataset (image-level tags only; pixel ground truth for scoring).

    python benchmarks/pseudo_labels.py              # minutes on 2 CPU cores
    python benchmarks/pseudo_labels.py --quick      # smoke run, numbers mean nothing

1. A CAM classifier (``cam``) is trained on the tags; its multi-scale CAMs
   of the training and validation images are the seeds. Every method is
   built and trained by the demo's recipes (``wsss_app.pipeline.recipes``).
2. ``affinitynet`` is trained on PSA's affinity labels of the training CAMs
   and ``irnet`` on IRNet's IR labels of them (both start from the CAM
   network's backbone, standing in for ImageNet weights; IRNet trains it with
   its branches, where irn freezes its ImageNet backbone: frozen
   classification-only features gave a boundary map too weak for the walk to
   gain); each walks the validation CAMs.
3. ``ssss`` and ``recurseed`` are trained from the tags alone (single stage);
   their own CAMs are their seeds.
4. mIoU (background + 4 classes) of every seed and pseudo-mask against the
   ground truth, the pseudo-label stage's time and peak memory.
5. IRNet's walk at its full VOC size (500 x 375 images, stride 4, 21 labels),
   where the dense (HW)^2 matrix of the original code takes 0.51 GiB per
   matrix and about 26 TFLOP for the 8 squarings.

Writes ``<out>/pseudo-labels-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wsss_ext  # noqa: E402
from common import device_name, device_slug, peak_memory  # noqa: E402
from python_models import pseudo  # noqa: E402
from wsss_app.pipeline.recipes import Recipe, batched, method_cams, train_method  # noqa: E402
from wsss_app.pipeline.synthetic import CLASS_NAMES, IGNORE_INDEX, make_dataset  # noqa: E402
from wsss_app.pipeline.training import to_unit  # noqa: E402
from wsss_ext.metrics import confusion_matrix, mean_iou  # noqa: E402


@dataclass
class Config:
    n_train: int = 192
    n_val: int = 48
    image_size: int = 64
    recipe: Recipe = field(default_factory=Recipe)  # 10 epochs, batch 16, lr 2e-3, width 16, 3 CAM scales
    cam_threshold: float = 0.25  # the constant background score of a CAM seed (IRNet's chain)


QUICK = Config(n_train=32, n_val=8, image_size=64, recipe=Recipe(epochs=1, cam_scales=(1.0,)))


def _log(message: str) -> None:
    print(message, flush=True)


def _miou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return 100 * mean_iou(confusion_matrix(predicted.cpu(), truth, len(CLASS_NAMES), IGNORE_INDEX))


def _stage(fn, device: str) -> tuple[torch.Tensor, float, int | None]:
    """Result, seconds and peak memory of one pseudo-label stage (run twice: timed, then measured)."""
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, peak_memory(fn, device)


def run(config: Config, device: str = "cpu", progress: bool = False) -> dict:
    train = make_dataset(config.n_train, config.image_size, seed=config.recipe.seed)
    val = make_dataset(config.n_val, config.image_size, seed=config.recipe.seed + 10_000)
    recipe, batch_size = config.recipe, config.recipe.batch_size
    rows, timings = [], {}

    def row(method: str, stage: str, labels: torch.Tensor, seconds: float, memory: int | None) -> None:
        rows.append({"method": method, "stage": stage, "miou": _miou(labels, val.masks), "seconds": seconds,
                     "peak_memory_bytes": memory})

    def trained(key: str, **extra):
        start = time.perf_counter()
        model = train_method(key, train.images, train.tags, recipe, device=device, progress=progress, **extra)
        timings[f"train {key}"] = time.perf_counter() - start
        _log(f"trained {key} in {timings[f'train {key}']:.0f} s")
        return model

    def seeds_of(cams: torch.Tensor) -> torch.Tensor:
        return pseudo.cams_to_labels(cams, val.tags.to(device), config.cam_threshold)

    # 1. The CAM classifier and its seeds (wsss_app.pipeline.recipes: the demo's recipes).
    cam = trained("cam")
    train_cams, val_cams = (method_cams(cam, data.images, data.tags, recipe, device) for data in (train, val))
    row("cam", f"CAM seed (background {config.cam_threshold})", seeds_of(val_cams), 0.0, None)

    # 2. AffinityNet and IRNet on labels made from the training CAMs; each walks the validation CAMs.
    for key, affinity in (("affinitynet", "feature affinity"), ("irnet", "boundary affinity")):
        model = trained(key, cam_network=cam, cams=train_cams)
        walked, seconds, memory = _stage(lambda model=model: batched(
            lambda x, t, c: model.pseudo_labels(to_unit(x.to(device)), t.to(device), cams=c), val.images, val.tags,
            val_cams, batch_size=batch_size), device)
        row(key, f"random walk of the CAMs ({affinity})", walked, seconds, memory)

    # 3. The single-stage methods, from the tags alone; their own CAMs are their seeds.
    for key in ("ssss", "recurseed"):
        model = trained(key)
        with torch.no_grad():
            own = batched(lambda x, t, model=model: model.cams(to_unit(x.to(device)), t.to(device)), val.images,
                          val.tags, batch_size=batch_size)
        row(key, f"its CAM seed (background {config.cam_threshold})", seeds_of(own), 0.0, None)
        masks, seconds, memory = _stage(lambda model=model: batched(
            lambda x, t: model.pseudo_labels(to_unit(x.to(device)), t.to(device)), val.images, val.tags,
            batch_size=batch_size), device)
        row(key, "its pseudo-labels (PAMR / SCG + PAMR + CRF)", masks, seconds, memory)

    # 4. IRNet's walk at its full size.
    generator = torch.Generator().manual_seed(1)
    height, width = (94, 125) if config is not QUICK else (24, 32)
    full_cams = torch.rand(1, 20, height, width, generator=generator).to(device)
    boundary = torch.rand(1, 1, height, width, generator=generator).to(device) ** 4
    walk = lambda: wsss_ext.irnet_random_walk(full_cams, boundary, beta=10.0, n_steps=256)  # noqa: E731
    _, seconds, memory = _stage(walk, device)
    full_size = {"shape": [1, 20, height, width], "seconds": seconds, "peak_memory_bytes": memory,
                 "dense_matrix_bytes": (height * width) ** 2 * 4}

    return {"config": asdict(config), "rows": rows, "training_seconds": timings, "irnet_full_size_walk": full_size}


def _markdown(report: dict) -> str:
    lines = ["| method | pseudo-labels | mIoU (%) | time (s) | peak memory (MiB) |", "| --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        memory = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
        seconds = "-" if r["seconds"] == 0 else f"{r['seconds']:.2f}"
        lines.append(f"| {r['method']} | {r['stage']} | {r['miou']:.1f} | {seconds} | {memory} |")
    full = report["irnet_full_size_walk"]
    memory = "n/a" if full["peak_memory_bytes"] is None else f"{full['peak_memory_bytes'] / 2**20:.1f} MiB"
    lines.append("")
    lines.append(f"IRNet's walk at {' x '.join(map(str, full['shape']))} (256 steps): {full['seconds']:.2f} s, "
                 f"{memory}; the dense transition matrix alone is {full['dense_matrix_bytes'] / 2**30:.2f} GiB.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run; its numbers mean nothing")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    report = run(QUICK if args.quick else Config(), args.device, args.progress)
    report.update(device=device_name(args.device), date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  torch_version=torch.__version__, quick=args.quick)
    text = _markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"pseudo-labels-{device_slug(report['device'])}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
