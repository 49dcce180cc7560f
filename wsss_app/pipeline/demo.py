"""``wsss-ext demo``: the pseudo-label stage end to end on synthetic data, as
the WSSS papers compare their methods.

1. Generate a train and a validation split (:mod:`wsss_app.pipeline.synthetic`).
2. Train each method on the image-level tags only, through the method
   contract (:mod:`wsss_app.pipeline.recipes`): CAM, SEAM, Puzzle-CAM,
   RecurSeed and SSSS from the tags; IRNet (and AffinityNet) on labels made
   from the CAM network's CAMs.
3. Extract each method's multi-scale, flipped CAMs of the validation images'
   tagged classes (IRNet / AffinityNet walk the CAM network's).
4. Refine them with every chain (:mod:`wsss_app.pipeline.chains`; the walk on
   the method's trained boundary or affinity network where it has one, else
   on the image gradient) and, for RecurSeed and SSSS, with the method's own
   pseudo-label rule.
5. Score each row's pseudo-masks against the pixel ground truth (mIoU over
   background + 4 classes), with its time and peak memory; rank the methods
   by their best pseudo-masks; write ``report.json``, ``report.md`` and
   ``figure.png`` (images, each method's CAM and best pseudo-masks, ground truth).

Every method is seeded (``DemoConfig.seed``): a rerun on the same machine
gives the same table.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from wsss_app.pipeline.chains import (
    CHAINS,
    ChainSettings,
    chain_settings,
    refine,
    settings_dict,
)
from wsss_app.pipeline.profiling import timed
from wsss_app.pipeline.recipes import (
    FROM_CAMS,
    FROM_TAGS,
    Recipe,
    batched,
    method_cams,
    train_method,
)
from wsss_app.pipeline.synthetic import CLASS_NAMES, IGNORE_INDEX, make_dataset
from wsss_app.pipeline.training import bar, to_unit
from wsss_app.pipeline.walks import walk_of
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou

__all__ = ["DEMO_METHODS", "DEMO_SETTINGS", "OWN_RULES", "PRESETS", "DemoConfig", "run_demo"]

# The published settings with the CRF's appearance width shrunk for 96-pixel images: 80 px on ~500 x 375
# photos is 20 px here (a quarter); the smoothness width stays 3 px (below 1 px it would do nothing).
DEMO_SETTINGS = chain_settings(crf_bilateral_sxy=20.0)

# AffinityNet (--methods ...,affinitynet) adds about a minute of training to the five the default takes.
DEMO_METHODS = ("cam", "seam", "puzzle_cam", "irnet", "recurseed", "ssss")

# The walk rule of methods that do not walk as IRNet does: PSA's beta and (1 - max)^16 background (infer_aff.py).
WALK_RULES = {"affinitynet": dict(walk_beta=8.0, walk_bg_power=16.0)}

# Methods whose own pseudo-label rule is not one of the chains: the row's name and what it runs.
OWN_RULES = {
    "recurseed": "its pseudo-labels (decoder, CRF)",
    "ssss": "its pseudo-labels (PAMR of its masks)",
}


@dataclass
class DemoConfig:
    n_train: int = 192
    n_val: int = 48
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 2e-3
    width: int = 16
    cam_scales: tuple[float, ...] = (1.0, 0.75, 1.25)
    seed: int = 0
    figure_rows: int = 5
    methods: tuple[str, ...] = DEMO_METHODS

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                      width=self.width, cam_scales=self.cam_scales, seed=self.seed)


PRESETS = {
    "default": DemoConfig(),
    # A seconds-long run for the test suite; its numbers mean nothing.
    "tiny": DemoConfig(n_train=32, n_val=8, image_size=32, epochs=1, batch_size=16, cam_scales=(1.0,),
                       figure_rows=2, methods=("cam",)),
}


def _miou(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[float, dict]:
    confusion = confusion_matrix(predicted.cpu(), truth, len(CLASS_NAMES), IGNORE_INDEX)
    return 100 * mean_iou(confusion), dict(zip(CLASS_NAMES, (100 * iou_from_confusion(confusion)).tolist()))


def _parse_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [part.strip() for part in methods.split(",") if part.strip()]
    methods = tuple(methods)
    known = FROM_TAGS + FROM_CAMS
    unknown = [key for key in methods if key not in known]
    if not methods or unknown:
        raise ValueError(f"methods must name some of {sorted(known)}, got {list(methods) or 'none'}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods lists a method twice: {list(methods)}")
    return methods


def _score_rows(key, model, cams, walk, settings, val, batch_size, device) -> tuple[dict, dict]:
    """Each chain's (and the method's own rule's) pseudo-masks of the validation
    set: ({row: mIoU, per-class IoU, seconds, peak memory}, {row: labels})."""
    rows, labels = {}, {}

    def chain_labels(chain):
        return batched(lambda x, c: refine(x.to(device), c, chain, settings, walk), val.images, cams,
                       batch_size=batch_size)

    def own_labels():
        return batched(lambda x, t: model.pseudo_labels(to_unit(x.to(device)), t.to(device)), val.images, val.tags,
                       batch_size=batch_size)

    runs = [(chain, functools.partial(chain_labels, chain)) for chain in CHAINS]
    if key in OWN_RULES:
        runs.append((OWN_RULES[key], own_labels))
    for name, fn in runs:
        predicted, seconds, memory = timed(fn, device)
        miou, per_class = _miou(predicted, val.masks)
        rows[name] = {"miou": miou, "per_class_iou": per_class, "seconds": seconds, "peak_memory_bytes": memory}
        labels[name] = predicted.cpu()
    return rows, labels


def run_demo(out_dir: str | Path, device: str = "cpu", preset: str = "default", progress: bool = True,
             settings: ChainSettings | None = None, methods: str | tuple[str, ...] | None = None) -> dict:
    """Run the demo (see the module docstring) and return its report.

    Args:
        preset: a key of :data:`PRESETS`.
        settings: the chains' settings (default :data:`DEMO_SETTINGS`).
        methods: the methods to compare (comma-separated or a tuple); default
            the preset's (:data:`DEMO_METHODS` for ``default``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset]
    if methods is not None:
        config = replace(config, methods=_parse_methods(methods))
    settings = DEMO_SETTINGS if settings is None else settings
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = config.recipe()
    timings = {}
    started = time.perf_counter()

    start = time.perf_counter()
    train = make_dataset(config.n_train, config.image_size, seed=config.seed)
    val = make_dataset(config.n_val, config.image_size, seed=config.seed + 10_000)
    timings["dataset"] = time.perf_counter() - start

    trained: dict[str, torch.nn.Module] = {}

    def trained_method(key: str) -> torch.nn.Module:
        if key not in trained:
            extra = {}
            if key in FROM_CAMS:  # their time counts the CAMs of the training images they learn from
                cam = trained_method("cam")
                start = time.perf_counter()
                extra = dict(cam_network=cam, cams=method_cams(cam, train.images, train.tags, recipe, device))
            else:
                start = time.perf_counter()
            trained[key] = train_method(key, train.images, train.tags, recipe, device=device, progress=progress,
                                        **extra)
            timings[f"train {key}"] = time.perf_counter() - start
        return trained[key]

    results, figure_maps = {}, {}
    for key in bar(config.methods, progress, desc="methods", unit="method"):
        model = trained_method(key)
        seeds_from = "cam" if key in FROM_CAMS else key
        start = time.perf_counter()
        cams = method_cams(trained_method(seeds_from), val.images, val.tags, recipe, device)
        timings[f"cams {key}"] = time.perf_counter() - start
        walk = walk_of(model)
        rows, labels = _score_rows(key, model, cams, walk, settings.replace(**WALK_RULES.get(key, {})), val,
                                   config.batch_size, device)
        best = max((name for name in rows if name != "cam"), key=lambda name: rows[name]["miou"])
        results[key] = {
            "seeds": "the CAM network's CAMs" if key in FROM_CAMS else "its CAMs",
            "walk": (walk.name if walk is not None else "the image-gradient boundary"),
            "training_seconds": timings[f"train {key}"],
            "rows": rows,
            "best": best,
            "best_miou": rows[best]["miou"],
            "gain_over_cam": rows[best]["miou"] - rows["cam"]["miou"],
        }
        figure_maps[key] = (cams.cpu(), labels[best])

    ranking = sorted(results, key=lambda key: -results[key]["best_miou"])
    top = results[ranking[0]]
    timings["total"] = time.perf_counter() - started
    report = {
        "config": {**asdict(config), "preset": preset, "device": str(device)},
        "chain_settings": settings_dict(settings),
        "classes": list(CLASS_NAMES),
        "ranking": ranking,
        "methods": results,
        # The best method's rows, best chain and gain (what CI checks), and the smallest gain of any method.
        "best_method": ranking[0],
        "chains": {name: top["rows"][name] for name in CHAINS},
        "best_refined_chain": top["best"],
        "gain_over_cam": top["gain_over_cam"],
        "min_gain_over_cam": min(result["gain_over_cam"] for result in results.values()),
        "timings_seconds": timings,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    _figure(out_dir / "figure.png", val.images, val.masks, figure_maps, results,
            min(config.figure_rows, len(val)))
    return report


def _figure(path: Path, images, masks, maps: dict, results: dict, rows: int) -> None:
    """Rows of validation images: the image, then each method's CAM (max over
    classes) and best pseudo-masks, then the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsss_ext.io import VOC_PALETTE

    def colour(label_map):
        label_map = label_map.copy()
        label_map[label_map == IGNORE_INDEX] = 255
        return VOC_PALETTE[label_map]

    titles, columns = ["image"], [lambda row: images[row].permute(1, 2, 0).numpy()]
    for key, (cams, labels) in maps.items():
        titles += [f"{key} CAM", f"{key}\n{results[key]['best']}"]
        columns += [lambda row, cams=cams: cams[row].amax(0).numpy(),
                    lambda row, labels=labels: colour(labels[row].numpy())]
    titles.append("ground truth")
    columns.append(lambda row: colour(masks[row].numpy()))
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.45 * len(columns), 1.55 * rows), squeeze=False)
    for row in range(rows):
        for column, (axis, panel) in enumerate(zip(axes[row], columns)):
            heat = titles[column].endswith(" CAM")
            axis.imshow(panel(row), cmap="jet" if heat else None, vmin=0, vmax=1 if heat else None)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _markdown(report: dict) -> str:
    chains = list(CHAINS[1:])
    lines = [
        "| rank | method | seeds | CAM | " + " | ".join(chains) + " | own rule | best | gain | "
        "train (s) | best: time (s) | best: peak memory (MiB) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in chains) + " | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, key in enumerate(report["ranking"], 1):
        result = report["methods"][key]
        rows = result["rows"]
        own = next((rows[name]["miou"] for name in rows if name not in CHAINS), None)
        best = rows[result["best"]]
        lines.append(
            f"| {rank} | {key} | {result['seeds']} | {rows['cam']['miou']:.1f} | "
            + " | ".join(f"{rows[name]['miou']:.1f}" for name in chains)
            + f" | {'-' if own is None else f'{own:.1f}'} | {result['best']} | +{result['gain_over_cam']:.1f} | "
            f"{result['training_seconds']:.0f} | {best['seconds']:.2f} | {_mib(best['peak_memory_bytes'])} |")
    walks = "; ".join(f"{key}: {result['walk']}" for key, result in report["methods"].items())
    timings = report["timings_seconds"]
    return ("mIoU (%) of each method's pseudo-masks on the synthetic validation set (background + 4 classes).\n\n"
            + "\n".join(lines) + f"\n\nThe walk's affinities: {walks}.\n\n"
            f"Total {timings['total']:.0f} s ({report['config']['device']}).\n")


def print_summary(report: dict) -> None:
    print(_markdown(report))
    print(f"best: {report['best_method']} with {report['best_refined_chain']} "
          f"(+{report['gain_over_cam']:.1f} mIoU over its CAM); every method gains at least "
          f"{report['min_gain_over_cam']:.1f}")
