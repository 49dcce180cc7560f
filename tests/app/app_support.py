"""Data folders for the application's tests, made from the synthetic set: a
PASCAL VOC 2012 layout and a folder of one's own with tags.csv, a few 32-pixel
images each, with their true tags and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wsss_ext.io import write_label_map
from wsss_app.pipeline.synthetic import CLASS_NAMES, make_dataset

SIZE = 32
# The synthetic set's four classes stand for these VOC classes in the VOC-layout folder.
VOC_STAND_INS = ("aeroplane", "bicycle", "bird", "boat")
VOC_INDEX = {"aeroplane": 1, "bicycle": 2, "bird": 3, "boat": 4}  # VOC label of each (class column + 1)


def synthetic(n: int, seed: int = 0):
    data = make_dataset(n, SIZE, seed=seed, min_visible=12)
    images = data.images.permute(0, 2, 3, 1).numpy()
    tags = [[CLASS_NAMES[1 + c] for c in row.nonzero().flatten().tolist()] for row in data.tags]
    return images, tags, data.masks.numpy()


def make_tags_folder(root: Path, n: int = 8, seed: int = 0, separator: str = " ") -> Path:
    """``root/img<i>.png`` with ``tags.csv`` (a header row, then file name and
    class names) and ``masks/img<i>.png``; classes: the synthetic set's four."""
    images, tags, masks = synthetic(n, seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file,tags"]
    for i, (image, names, mask) in enumerate(zip(images, tags, masks)):
        Image.fromarray(image).save(root / f"img{i}.png")
        # The folder's classes are the sorted union of the names: renumber the synthetic masks to match.
        write_label_map(_renumber(mask, CLASS_NAMES[1:], sorted(CLASS_NAMES[1:])), root / "masks" / f"img{i}.png")
        rows.append(f"img{i}.png,{separator.join(names)}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root


def make_voc_folder(root: Path, n: int = 8, seed: int = 0, splits: dict[str, range] | None = None) -> Path:
    """A VOC 2012 layout: JPEGImages/, Annotations/ (one <object> per tag, with
    a <part> whose name is no class), SegmentationClass/ in VOC's numbering,
    ImageSets/Segmentation/{train,val}.txt."""
    images, tags, masks = synthetic(n, seed)
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for image_id, image, names, mask in zip(ids, images, tags, masks):
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        voc_names = [VOC_STAND_INS[CLASS_NAMES.index(name) - 1] for name in names]
        objects = "".join(f"<object><name>{name}</name><difficult>0</difficult>"
                          f"<part><name>hand</name></part></object>" for name in voc_names)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>")
        write_label_map(mask, root / "SegmentationClass" / f"{image_id}.png")  # stand-ins are VOC labels 1..4
    splits = splits or {"train": range(n - 2), "val": range(n - 2, n)}
    for split, members in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{ids[i]}\n" for i in members))
    return root


def _renumber(mask: np.ndarray, names, order) -> np.ndarray:
    lookup = np.arange(256)
    for column, name in enumerate(names):
        lookup[column + 1] = list(order).index(name) + 1
    return lookup[mask]
