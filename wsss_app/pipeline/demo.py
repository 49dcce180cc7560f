"""``wsss-ext demo``: the pseudo-label stage end to end on synthetic data.

1. Generate a train and a validation split (:mod:`wsss_app.pipeline.synthetic`).
2. Train a small CAM classifier (``python_models.create("cam")`` on a ResNet
   with one bottleneck per stage) on the image-level tags only, through the
   method contract (``losses`` / ``after_step`` / ``cams``).
3. Extract multi-scale, flipped CAMs of the validation images' tagged classes.
4. Refine them with every chain (:mod:`wsss_app.pipeline.chains`).
5. Score each chain's pseudo-masks against the pixel ground truth (mIoU over
   background + 4 classes), time every stage, and write ``report.json``,
   ``report.md`` and ``figure.png`` (images, CAMs, refined masks, ground truth).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from python_models import create, resnet_tiny
from wsss_app.pipeline.chains import CHAINS, ChainSettings, chain_settings, refine
from wsss_app.pipeline.synthetic import CLASS_NAMES, IGNORE_INDEX, make_dataset
from wsss_app.pipeline.training import bar, fit, to_unit
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou

__all__ = ["DEMO_SETTINGS", "DemoConfig", "PRESETS", "run_demo"]

# The published settings with the CRF's appearance width shrunk for 96-pixel images: 80 px on ~500 x 375
# photos is 20 px here (a quarter); the smoothness width stays 3 px (below 1 px it would do nothing).
DEMO_SETTINGS = chain_settings(crf_bilateral_sxy=20.0)


@dataclass
class DemoConfig:
    n_train: int = 480
    n_val: int = 80
    image_size: int = 96
    epochs: int = 14
    batch_size: int = 32
    learning_rate: float = 2e-3
    width: int = 16
    cam_scales: tuple[float, ...] = (1.0, 0.75, 1.25)
    seed: int = 0
    figure_rows: int = 6


PRESETS = {
    "default": DemoConfig(),
    # A seconds-long run for the test suite; its numbers mean nothing.
    "tiny": DemoConfig(n_train=48, n_val=8, image_size=64, epochs=2, batch_size=16, cam_scales=(1.0,), figure_rows=2),
}


def _figure(path: Path, images, masks, cams, labels: dict, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsss_ext.io import VOC_PALETTE

    columns = ["image", "CAM (max over classes)"] + list(labels) + ["ground truth"]
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows), squeeze=False)

    def colour(label_map):
        label_map = label_map.copy()
        label_map[label_map == IGNORE_INDEX] = 255
        return VOC_PALETTE[label_map]

    for row in range(rows):
        panels = [images[row].permute(1, 2, 0).numpy(), cams[row].amax(0).numpy()]
        panels += [colour(labels[name][row].numpy()) for name in labels] + [colour(masks[row].numpy())]
        for column, (axis, panel) in enumerate(zip(axes[row], panels)):
            axis.imshow(panel, cmap="jet" if column == 1 else None, vmin=0, vmax=1 if column == 1 else None)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_demo(out_dir: str | Path, device: str = "cpu", preset: str = "default", progress: bool = True,
             settings: ChainSettings | None = None) -> dict:
    """Run the demo (see the module docstring) and return its report."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config, settings = PRESETS[preset], settings or DEMO_SETTINGS
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    timings = {}

    start = time.perf_counter()
    train = make_dataset(config.n_train, config.image_size, seed=config.seed)
    val = make_dataset(config.n_val, config.image_size, seed=config.seed + 10_000)
    timings["dataset"] = time.perf_counter() - start

    start = time.perf_counter()
    model = create("cam", backbone=resnet_tiny(output_stride=8, width=config.width),
                   num_classes=len(CLASS_NAMES) - 1).to(device)
    losses = fit(model, train.images, train.tags, epochs=config.epochs, batch_size=config.batch_size,
                 learning_rate=config.learning_rate, seed=config.seed, device=device, progress=progress,
                 desc="training CAM classifier")
    timings["training"] = time.perf_counter() - start

    start = time.perf_counter()
    cams = []
    with torch.no_grad():
        for first in range(0, len(val), config.batch_size):
            images = to_unit(val.images[first : first + config.batch_size].to(device))
            tags = val.tags[first : first + config.batch_size].to(device)
            cams.append(model.cams(images, tags, config.cam_scales, flip=True))  # tagged classes only, as WSSS does
        logits = torch.cat([model(to_unit(val.images[i : i + 64].to(device))) for i in range(0, len(val), 64)])
    cams = torch.cat(cams)
    timings["cams"] = time.perf_counter() - start
    tag_accuracy = float(((logits > 0).float().cpu() == val.tags).float().mean())

    n_classes = len(CLASS_NAMES)
    results, labels = {}, {}
    for chain in bar(CHAINS, progress, desc="refining", unit="chain"):
        start = time.perf_counter()
        predicted = torch.cat([
            refine(val.images[i : i + config.batch_size].to(device), cams[i : i + config.batch_size], chain, settings)
            for i in range(0, len(val), config.batch_size)
        ]).cpu()
        elapsed = time.perf_counter() - start
        confusion = confusion_matrix(predicted, val.masks, n_classes, IGNORE_INDEX)
        results[chain] = {
            "miou": 100 * mean_iou(confusion),
            "per_class_iou": dict(zip(CLASS_NAMES, (100 * iou_from_confusion(confusion)).tolist())),
            "seconds": elapsed,
        }
        timings[chain] = elapsed
        labels[chain] = predicted

    best = max((name for name in CHAINS if name != "cam"), key=lambda name: results[name]["miou"])
    report = {
        "config": {**asdict(config), "preset": preset, "device": str(device)},
        "chain_settings": asdict(settings),
        "classes": list(CLASS_NAMES),
        "training_loss": losses,
        "val_tag_accuracy": tag_accuracy,
        "chains": results,
        "best_refined_chain": best,
        "gain_over_cam": results[best]["miou"] - results["cam"]["miou"],
        "timings_seconds": timings,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    _figure(out_dir / "figure.png", val.images, val.masks, cams.cpu(), labels, min(config.figure_rows, len(val)))
    return report


def _markdown(report: dict) -> str:
    lines = [
        "| chain | mIoU (%) | " + " | ".join(report["classes"]) + " | time (s) |",
        "| --- | --- | " + " | ".join("---" for _ in report["classes"]) + " | --- |",
    ]
    for name, result in report["chains"].items():
        per_class = " | ".join(f"{value:.1f}" for value in result["per_class_iou"].values())
        lines.append(f"| {name} | {result['miou']:.1f} | {per_class} | {result['seconds']:.2f} |")
    timings = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["timings_seconds"].items())
    return "\n".join(lines) + f"\n\nStage timings: {timings}.\n"


def print_summary(report: dict) -> None:
    print(_markdown(report))
    print(f"best refined chain: {report['best_refined_chain']} (+{report['gain_over_cam']:.1f} mIoU over CAM); "
          f"validation tag accuracy {100 * report['val_tag_accuracy']:.1f}%")

