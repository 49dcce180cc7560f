"""Image and label-map I/O for the command line: images read as RGB uint8,
label maps written as palette PNGs with PASCAL VOC's colours (what VOC
evaluation tools and viewers expect), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "VOC_PALETTE", "read_image", "read_label_map", "write_label_map", "write_overlay"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _voc_palette(n: int = 256) -> np.ndarray:
    """VOC's colour map: label l gets the bits of l spread over R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for label in range(n):
        value, red, green, blue = label, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (red, green, blue)
    return palette


VOC_PALETTE: np.ndarray = _voc_palette()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 uint8 RGB. Raises ValueError naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """H x W int64 labels of a palette (or grey) PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I"):
                raise ValueError(f"{path}: a label map must be a palette or grey image, got mode {image.mode}")
            return np.asarray(image).astype(np.int64)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read the label map ({error})") from error


def _atomic_save(image, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never
    sees half a file, and an interrupted run leaves none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(handle)
    try:
        image.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_label_map(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Save H x W labels in [0, 255] as a palette PNG with VOC's colours."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("labels must be an H x W map of values in [0, 255]")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    _atomic_save(image, Path(path))


def write_overlay(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike, alpha: float = 0.5) -> None:
    """Save the image with its labels' VOC colours blended in (background kept)."""
    from PIL import Image

    colours = VOC_PALETTE[np.asarray(labels).clip(0, 255)].astype(np.float32)
    mask = (np.asarray(labels) > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * colours, image).round().astype(np.uint8)
    _atomic_save(Image.fromarray(blended), Path(path))
