"""Tagged image datasets for ``wsss-ext train / cams / pseudo-labels``.

:func:`open_dataset` recognises three sources:

- **PASCAL VOC 2012** (a folder holding ``JPEGImages/`` and
  ``ImageSets/Segmentation/``): the ids of ``ImageSets/Segmentation/<split>.txt``
  (``train``, ``val``, ``trainval``; SBD's ``train_aug`` when that list is
  present, and then the default), the tags from ``Annotations/<id>.xml``
  (every ``<object><name>``, difficult ones included, as irn's
  ``make_cls_labels.py``), masks from ``SegmentationClass/<id>.png`` where
  present, and each object's ``<bndbox>`` as :attr:`Sample.boxes` (``train
  --method simple_does_it``); VOC's 20 classes.
- **A folder of one's own** holding ``tags.csv``: one row per image, the file
  name (relative to the folder) and its class names separated by spaces, or
  by ``;`` when a name holds a space (``dog person`` or ``potted plant;dog``);
  a first row naming the columns (``file,tags``) is skipped. The classes are
  the lines of ``classes.txt`` when the folder has one, else the sorted union
  of the names. Optional ``masks/<stem>.png``: palette PNGs, 0 background,
  c + 1 for class c of that list, 255 ignored.
- **The keyword** ``synthetic``: the demo's synthetic set
  (:mod:`wsss_app.pipeline.synthetic`), split ``train`` or ``val``.

With ``tags_required=False`` a plain folder of images (no ``tags.csv``) is
accepted too, every image tagged with every class (``wsss-ext cams`` on
untagged photos).

Bad entries never abort: an image missing, unreadable, or tagged with a class
outside the class list is skipped and reported by name in
:attr:`TaggedDataset.skipped` (the unknown class names also in
:attr:`TaggedDataset.unknown_classes`, so a command can refuse data that names
classes its trained run does not have). Images are checked at opening by their
header, and with ``decode=True`` (``wsss-ext train``, which must not stop in
the middle of an epoch) decoded once in full; otherwise an image damaged past
its header fails when read, with a ``ValueError`` naming it.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsss_ext.io import IMAGE_SUFFIXES, BadFileError, open_image, read_image, read_label_map

__all__ = ["SYNTHETIC", "VOC_CLASSES", "Sample", "TaggedDataset", "open_dataset"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

SYNTHETIC = "synthetic"
# split -> (number of images, seed); the demo's sizes and seed offset, at 64 pixels.
_SYNTHETIC_SPLITS = {"train": (64, 0), "val": (32, 10_000)}
_SYNTHETIC_SIZE = 64

_HEADER_NAMES = {"file", "filename", "file_name", "image", "name", "path"}


@dataclass(frozen=True)
class Sample:
    """One image: its name (the stem outputs are named by), its pixels (a file,
    or an H x W x 3 uint8 array for the synthetic set), its tags (class
    columns) and its mask (a file, an array, or None)."""

    name: str
    image: Path | np.ndarray
    tags: tuple[int, ...]
    mask: Path | np.ndarray | None = None
    # VOC's object boxes: (class column, x0, y0, x1, y1) in the image's pixels, 0-based, exclusive ends.
    boxes: tuple[tuple[int, float, float, float, float], ...] = ()


@dataclass
class TaggedDataset:
    """Samples with image-level tags over ``classes``; see the module docstring."""

    root: str
    layout: str  # "voc", "tags", "images" or "synthetic"
    classes: tuple[str, ...]
    samples: list[Sample]
    skipped: dict[str, str] = field(default_factory=dict)  # image name -> why it was left out
    unknown_classes: dict[str, list[str]] = field(default_factory=dict)  # class name -> images naming it
    split: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_masks(self) -> bool:
        return any(sample.mask is not None for sample in self.samples)

    def tags(self) -> torch.Tensor:
        """N x C multi-hot float tags."""
        tags = torch.zeros(len(self.samples), self.num_classes)
        for row, sample in enumerate(self.samples):
            tags[row, list(sample.tags)] = 1
        return tags

    @property
    def has_boxes(self) -> bool:
        return any(sample.boxes for sample in self.samples)

    def boxes(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x M x 4 float boxes, N x M int64 classes, -1 padding) of every
        sample, scaled to its image resized to ``size`` x ``size`` (train's)."""
        most = max(1, max(len(sample.boxes) for sample in self.samples))
        boxes, classes = torch.zeros(len(self), most, 4), torch.full((len(self), most), -1, dtype=torch.long)
        for row, sample in enumerate(self.samples):
            if not sample.boxes:
                continue
            if isinstance(sample.image, np.ndarray):
                height, width = sample.image.shape[:2]
            else:
                with open_image(sample.image) as image:
                    width, height = image.size
            for column, (class_column, x0, y0, x1, y1) in enumerate(sample.boxes):
                boxes[row, column] = torch.tensor([x0 * size / width, y0 * size / height, x1 * size / width,
                                                   y1 * size / height])
                classes[row, column] = class_column
        return boxes, classes

    def read_image(self, index: int) -> np.ndarray:
        """H x W x 3 uint8 RGB of sample ``index`` (ValueError naming the file if it cannot be read)."""
        image = self.samples[index].image
        return image if isinstance(image, np.ndarray) else read_image(image)

    def read_mask(self, index: int) -> np.ndarray | None:
        """H x W int64 ground truth of sample ``index``, or None."""
        mask = self.samples[index].mask
        return mask if mask is None or isinstance(mask, np.ndarray) else read_label_map(mask)

    def drop_undecodable(self) -> None:
        """Decode every image file once and move those that fail (damaged past
        their header, e.g. truncated) from the samples to :attr:`skipped`."""
        kept = []
        for sample in self.samples:
            if isinstance(sample.image, Path):
                try:
                    with open_image(sample.image) as image:
                        image.load()
                except BadFileError as error:
                    self.skipped[sample.image.name] = error.reason
                    continue
            kept.append(sample)
        self.samples = kept

    def describe(self) -> str:
        split = f", split {self.split}" if self.split else ""
        masks = sum(sample.mask is not None for sample in self.samples)
        return (f"{self.root} ({self.layout}{split}): {len(self)} images, {self.num_classes} classes"
                + (f", {masks} with masks" if masks else ""))


def open_dataset(path_or_name: str | Path, split: str | None = None, classes: Sequence[str] | None = None,
                 tags_required: bool = True, decode: bool = False) -> TaggedDataset:
    """The dataset at ``path_or_name`` (a VOC root, a ``tags.csv`` folder, or
    ``"synthetic"``); see the module docstring.

    Args:
        split: VOC's image list (default ``train_aug`` if present, else
            ``train``) or the synthetic set's (``train`` / ``val``); a
            ``tags.csv`` folder has none.
        classes: the class list to map names onto (a trained run's); default
            the dataset's own. Images naming other classes are skipped.
        tags_required: False accepts a plain folder of images, every image
            tagged with every class of ``classes``.
        decode: decode every image once, skipping those that fail
            (:meth:`TaggedDataset.drop_undecodable`); else headers only.

    Raises:
        FileNotFoundError: the path does not exist.
        NotADirectoryError: it is a file.
        ValueError: neither layout (saying what was looked for), an unknown
            split, a malformed ``tags.csv`` / ``classes.txt``, or no usable image.
    """
    if str(path_or_name) == SYNTHETIC and not Path(SYNTHETIC).is_dir():
        dataset = _open_synthetic(split, classes)
    else:
        root = Path(path_or_name)
        if not root.exists():
            raise FileNotFoundError(f"data folder {root} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"data path {root} is not a folder")
        if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation").is_dir():
            dataset = _open_voc(root, split, classes)
        elif (root / "tags.csv").is_file():
            dataset = _open_tags_folder(root, split, classes)
        elif not tags_required and any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
            dataset = _open_image_folder(root, split, classes)
        else:
            raise ValueError(
                f"{root} is not a dataset: looked for the PASCAL VOC layout (JPEGImages/ and "
                f"ImageSets/Segmentation/*.txt) or a folder of images with tags.csv (file name, class names)"
                + ("" if tags_required else " or images (.jpg, .png)"))
    if decode:
        dataset.drop_undecodable()
    if not dataset.samples:
        reasons = "; ".join(f"{name}: {why}" for name, why in list(dataset.skipped.items())[:3])
        raise ValueError(f"{dataset.root} holds no usable image" + (f" ({reasons}, ...)" if reasons else ""))
    return dataset


# --- the three layouts ---------------------------------------------------------------------------------


def _open_synthetic(split: str | None, classes: Sequence[str] | None) -> TaggedDataset:
    from wsss_app.pipeline.synthetic import CLASS_NAMES, make_dataset

    split = split or "train"
    if split not in _SYNTHETIC_SPLITS:
        raise ValueError(f"the synthetic set has splits {sorted(_SYNTHETIC_SPLITS)}, not {split!r}")
    count, seed = _SYNTHETIC_SPLITS[split]
    data = make_dataset(count, _SYNTHETIC_SIZE, seed=seed)
    names = CLASS_NAMES[1:]
    dataset = TaggedDataset(SYNTHETIC, "synthetic", _class_list(classes, names), [], split=split)
    for index in range(count):
        present = [names[c] for c in data.tags[index].nonzero().flatten().tolist()]
        image = data.images[index].permute(1, 2, 0).numpy()
        mask = _remap_mask(data.masks[index].numpy(), names, dataset.classes)
        _add(dataset, f"synthetic_{index:04d}", image, present, mask)
    return dataset


def _open_voc(root: Path, split: str | None, classes: Sequence[str] | None) -> TaggedDataset:
    lists = root / "ImageSets" / "Segmentation"
    available = sorted(p.stem for p in lists.glob("*.txt"))
    if split is None:
        split = "train_aug" if "train_aug" in available else "train"
    if split not in available:
        raise ValueError(f"{root}: no image list ImageSets/Segmentation/{split}.txt; the lists are {available}")
    dataset = TaggedDataset(str(root), "voc", _class_list(classes, VOC_CLASSES), [], split=split)
    ids = [line.split()[0] for line in (lists / f"{split}.txt").read_text().splitlines() if line.strip()]
    for image_id in ids:
        image = root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            dataset.skipped[image_id] = f"listed in {split}.txt but JPEGImages/{image_id}.jpg is missing"
            continue
        try:
            present = _voc_objects(root / "Annotations" / f"{image_id}.xml")
            boxes = _voc_boxes(root / "Annotations" / f"{image_id}.xml")
        except ValueError as error:
            dataset.skipped[image.name] = str(error)
            continue
        mask = root / "SegmentationClass" / f"{image_id}.png"
        # VOC's masks number the classes in VOC's order: a run with other classes cannot read them as they are.
        usable = mask.is_file() and dataset.classes == VOC_CLASSES
        _add(dataset, image_id, image, present, mask if usable else None, boxes)
    return dataset


def _voc_objects(xml_path: Path) -> list[str]:
    if not xml_path.is_file():
        raise ValueError(f"no annotation Annotations/{xml_path.name}")
    try:
        tree = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"Annotations/{xml_path.name} is not valid XML ({error})") from error
    # <name> also appears inside an object's <part> (person layout): only the objects' own names are tags.
    names = [obj.findtext("name", "").strip() for obj in tree.iter("object")]
    return sorted({name for name in names if name})


def _voc_boxes(xml_path: Path) -> list[tuple[str, float, float, float, float]]:
    """(class name, x0, y0, x1, y1) of every object with a ``<bndbox>``: VOC's
    1-based inclusive xmin..xmax as 0-based exclusive x0 = xmin - 1, x1 = xmax."""
    boxes = []
    for obj in ElementTree.parse(xml_path).getroot().iter("object"):
        name, box = obj.findtext("name", "").strip(), obj.find("bndbox")
        if not name or box is None:
            continue
        try:
            x0, y0, x1, y1 = (float(box.findtext(key, "")) for key in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            raise ValueError(f"Annotations/{xml_path.name}: a <bndbox> of {name} is not four numbers") from error
        boxes.append((name, x0 - 1, y0 - 1, x1, y1))
    return boxes


def _open_tags_folder(root: Path, split: str | None, classes: Sequence[str] | None) -> TaggedDataset:
    if split is not None:
        raise ValueError(f"{root} is a tags.csv folder, which has no splits (got --split {split})")
    rows = _read_tags_csv(root / "tags.csv")
    if classes is None:
        classes = _read_classes_txt(root / "classes.txt") if (root / "classes.txt").is_file() else sorted(
            {name for _, _, names in rows for name in names})
    dataset = TaggedDataset(str(root), "tags", tuple(classes), [])
    listed = set()
    for line, file_name, names in rows:
        image = _find_image(root, file_name)
        if image is None:
            dataset.skipped[file_name] = f"tags.csv line {line}: no such image in {root}"
            continue
        if image.stem in listed:
            dataset.skipped[file_name] = f"tags.csv line {line}: {image.stem} is listed twice"
            continue
        listed.add(image.stem)
        mask = root / "masks" / f"{image.stem}.png"
        _add(dataset, image.stem, image, names, mask if mask.is_file() else None)
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem not in listed and path.name not in dataset.skipped:
            dataset.skipped[path.name] = "not listed in tags.csv"
    return dataset


def _open_image_folder(root: Path, split: str | None, classes: Sequence[str] | None) -> TaggedDataset:
    if split is not None:
        raise ValueError(f"{root} is a plain folder of images, which has no splits (got --split {split})")
    if classes is None:
        raise ValueError(f"{root} has no tags.csv: the class names must come from a trained run")
    dataset = TaggedDataset(str(root), "images", tuple(classes), [])
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            _add(dataset, path.stem, path, list(classes), None)
    return dataset


# --- shared pieces -------------------------------------------------------------------------------------


def _add(dataset: TaggedDataset, name: str, image: Path | np.ndarray, names: Sequence[str],
         mask: Path | np.ndarray | None, boxes: Sequence[tuple[str, float, float, float, float]] = ()) -> None:
    """Append a sample unless its image is unreadable or a tag is unknown (then record why)."""
    label = image.name if isinstance(image, Path) else name
    unknown = sorted(set(names) - set(dataset.classes))
    if unknown:
        for class_name in unknown:
            dataset.unknown_classes.setdefault(class_name, []).append(label)
        dataset.skipped[label] = f"tagged with {unknown}, not among the classes {list(dataset.classes)}"
        return
    if isinstance(image, Path):
        problem = _header_problem(image)
        if problem:
            dataset.skipped[label] = problem
            return
    columns = {class_name: column for column, class_name in enumerate(dataset.classes)}
    boxes = tuple((columns[box[0]], *box[1:]) for box in boxes)
    dataset.samples.append(Sample(name, image, tuple(sorted(columns[n] for n in set(names))), mask, boxes))


def _header_problem(path: Path) -> str | None:
    """Why ``path`` is not an image wsss_ext.io can read, or None (reads the header only)."""
    try:
        with open_image(path) as image:
            width, height = image.size
    except BadFileError as error:
        return error.reason
    return None if width > 0 and height > 0 else "the image is empty"


def _class_list(classes: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(default if classes is None else classes)


def _remap_mask(mask: np.ndarray, names: Sequence[str], classes: Sequence[str]) -> np.ndarray | None:
    """A mask over ``names`` (c + 1) renumbered for ``classes``; None if a class is missing there."""
    if tuple(names) == tuple(classes):
        return mask
    if not set(names) <= set(classes):
        return None
    lookup = np.arange(256)
    for column, name in enumerate(names):
        lookup[column + 1] = list(classes).index(name) + 1
    return lookup[mask]


def _read_tags_csv(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, file name, class names) of every row of a tags.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: cannot read it as CSV ({error})") from error
    rows = []
    for line, row in enumerate(table, start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if line == 1 and row[0].strip().lower() in _HEADER_NAMES:
            continue
        field_text = ",".join(row[1:])
        separator = ";" if ";" in field_text else None
        names = [name.strip() for name in field_text.split(separator) if name.strip()]
        rows.append((line, row[0].strip(), names))
    if not rows:
        raise ValueError(f"{path} lists no image (expected rows 'file name,class names')")
    return rows


def _read_classes_txt(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path} must list distinct class names, one a line")
    return names


def _find_image(root: Path, file_name: str) -> Path | None:
    """The image a tags.csv row names: the file itself, or its stem with an image suffix."""
    path = root / file_name
    if path.is_file():
        return path
    if not path.suffix:
        for suffix in IMAGE_SUFFIXES:
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    return None
