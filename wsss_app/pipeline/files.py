"""``wsss-ext refine`` and ``wsss-ext evaluate`` on folders of files.

CAM files: ``<stem>.npy`` beside each image ``<stem>.jpg|png``, holding one
float array C x h x w: the CAMs of the dataset's C foreground classes (channel
c is label c + 1; label 0 is the background, derived by the chain's
background threshold), any resolution (resized bilinearly to the image),
non-negative; each channel is divided by its maximum, so an all-zero channel
is a class the image does not have. Outputs are palette PNGs with PASCAL
VOC's colours, ``<stem>.png``, written atomically.

Files are processed independently: each image and its CAM are read and
checked (wsss_ext.io's readers: decompression bombs, empty or truncated files,
pickles, wrong dtype or rank, zero-size sides, more than MAX_CAM_CLASSES
classes) before they join a batch, so a bad file, an image without a CAM (or a
CAM without an image) is reported by name and skipped and never costs the good
files of its batch; a batch the chain refuses is refined image by image. The
output folder is checked to be writable before any work. Under ``torchrun``
each process takes every world_size-th file.

Evaluation streams the files through one confusion matrix. A file it cannot
read is an error naming the file, not a skip: a score over fewer images than
the ground truth holds would silently be a different number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsss_app.pipeline.chains import ChainSettings, parse_chain, refine
from wsss_ext.io import (
    IMAGE_SUFFIXES,
    MAX_LABELS,
    BadFileError,
    prepare_output_dir,
    read_cam,
    read_image,
    read_label_map,
    write_label_map,
    write_overlay,
)
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou

__all__ = ["RefineSummary", "check_n_classes", "evaluate_folders", "pair_files", "refine_folder"]


@dataclass
class RefineSummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason


def _folder_files(folder: Path, argument: str) -> list[Path]:
    """The sorted files of an input folder; ValueError naming the argument if it is not a readable folder."""
    if not folder.is_dir():
        raise ValueError(f"{argument} {folder}: " + ("not a folder" if folder.exists() else "no such folder"))
    try:
        return sorted(folder.iterdir())
    except OSError as error:
        raise ValueError(f"{argument} {folder}: cannot list it ({error.strerror or error})") from None


def pair_files(images_dir: Path, cams_dir: Path) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """(image, cam) pairs matched by file stem, and the unmatched files with why."""
    images = {p.stem: p for p in _folder_files(Path(images_dir), "--images") if p.suffix.lower() in IMAGE_SUFFIXES}
    cams = {p.stem: p for p in _folder_files(Path(cams_dir), "--cams") if p.suffix == ".npy"}
    unmatched = {images[s].name: "no CAM file <stem>.npy for it" for s in sorted(images.keys() - cams.keys())}
    unmatched.update({cams[s].name: "no image with its stem" for s in sorted(cams.keys() - images.keys())})
    return [(images[s], cams[s]) for s in sorted(images.keys() & cams.keys())], unmatched


def _load_pair(image_path: Path, cam_path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The image (H x W x 3 uint8) and its CAMs resized to it, each channel divided
    by its maximum. Raises BadFileError naming the file at fault."""
    image = read_image(image_path)
    cam = torch.from_numpy(read_cam(cam_path))
    cam = F.interpolate(cam[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    return image, cam / cam.flatten(1).amax(1).clamp(min=1e-5)[:, None, None]


@dataclass
class _Item:
    stem: str
    image: np.ndarray
    cam: torch.Tensor


def _refine_items(items: list[_Item], refine_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  device: str, skipped: dict[str, str]) -> list[tuple[_Item, np.ndarray]]:
    """(item, label map) of a batch of one size and class count. If the chain
    refuses the batch, each image is refined alone so only the ones it refuses
    are lost (reported in ``skipped``)."""
    images = torch.stack([torch.from_numpy(item.image).permute(2, 0, 1) for item in items]).to(device)
    try:
        labels = refine_batch(images, torch.stack([item.cam for item in items]).to(device))
    except ValueError as error:
        if len(items) > 1:
            return [result for item in items for result in _refine_items([item], refine_batch, device, skipped)]
        skipped[f"{items[0].stem}.npy"] = f"the chain refused it ({error})"
        return []
    return list(zip(items, labels.cpu().numpy()))


def _write_outputs(item: _Item, label_map: np.ndarray, out_dir: Path, overlays: bool, summary: RefineSummary) -> None:
    """Write the mask (and overlay); a write the file system refuses skips this image only."""
    try:
        write_label_map(label_map, out_dir / f"{item.stem}.png")
        if overlays:
            write_overlay(item.image, label_map, out_dir / "overlays" / f"{item.stem}.png")
    except OSError as error:  # e.g. a full disk, or a folder where the mask should go
        summary.skipped[f"{item.stem}.png"] = f"cannot write it in {out_dir} ({error.strerror or error})"
        return
    summary.written.append(f"{item.stem}.png")


def refine_folder(images_dir, cams_dir, out_dir, chain: str = "cam+crf", device: str = "cpu", batch_size: int = 8,
                  overlays: bool = False, rank: int = 0, world_size: int = 1, progress: bool = False,
                  settings: ChainSettings | None = None, walk=None) -> RefineSummary:
    """Refine this rank's share of the folder's CAMs; see the module docstring.
    ``settings`` and ``walk`` are chains.refine's."""
    refine_batch = functools.partial(refine, chain=parse_chain(chain), settings=settings, walk=walk)
    out_dir = prepare_output_dir(out_dir, "--out")
    pairs, unmatched = pair_files(Path(images_dir), Path(cams_dir))
    summary = RefineSummary(skipped=dict(unmatched) if rank == 0 else {})
    pairs = pairs[rank::world_size]
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"refining (rank {rank})" if world_size > 1 else "refining", unit="image")
    pending: list[_Item] = []

    def flush() -> None:
        if pending:
            for item, label_map in _refine_items(pending, refine_batch, device, summary.skipped):
                _write_outputs(item, label_map, out_dir, overlays, summary)
            pending.clear()

    for image_path, cam_path in pairs:
        try:
            image, cam = _load_pair(image_path, cam_path)
        except BadFileError as error:
            summary.skipped[error.path.name] = error.reason
            continue
        # A batch holds images of one size and one class count.
        if pending and (pending[0].image.shape != image.shape or pending[0].cam.shape[0] != cam.shape[0]):
            flush()
        pending.append(_Item(image_path.stem, image, cam))
        if len(pending) == batch_size:
            flush()
    flush()
    return summary


def check_n_classes(n_classes: int | None, argument: str = "n_classes") -> None:
    """None (inferred) or 1 .. MAX_LABELS: label maps are uint8 PNGs, and the
    confusion matrix is n_classes squared."""
    if n_classes is not None and not 1 <= n_classes <= MAX_LABELS:
        raise ValueError(f"{argument} must be between 1 and {MAX_LABELS} (label maps are uint8 PNGs, labels 0 to "
                         f"{MAX_LABELS - 1}), got {n_classes}")


def _file_confusion(pred_path: Path, gt_path: Path, n_classes: int, ignore_index: int) -> torch.Tensor:
    pred, truth = read_label_map(pred_path), read_label_map(gt_path)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred_path.name}: prediction {pred.shape} and ground truth {truth.shape} differ in size")
    try:
        return confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), n_classes, ignore_index)
    except ValueError as error:
        raise ValueError(f"{pred_path.name} against {gt_path}: {error}") from None


def evaluate_folders(pred_dir, gt_dir, n_classes: int | None = None, ignore_index: int = 255) -> dict:
    """Confusion matrix, per-class IoU and mIoU of the prediction PNGs against
    the ground-truth PNGs of the same names (VOC evaluation). ``n_classes``
    (1 .. MAX_LABELS) defaults to the largest label seen + 1. Raises ValueError
    naming the file for one that cannot be read (see the module docstring)."""
    check_n_classes(n_classes)
    predictions = {p.stem: p for p in _folder_files(Path(pred_dir), "--pred") if p.suffix == ".png"}
    truths = {p.stem: p for p in _folder_files(Path(gt_dir), "--gt") if p.suffix == ".png"}
    missing = sorted(truths.keys() - predictions.keys())
    pairs = [(predictions[s], truths[s]) for s in sorted(truths.keys() & predictions.keys())]
    if not pairs:
        raise ValueError(f"no prediction in {pred_dir} has a ground truth of the same name in {gt_dir}")
    # Without n_classes, count over every possible label (256 x 256 int64: 512 KiB), then keep the labels seen.
    size = n_classes or MAX_LABELS
    confusion = torch.zeros(size, size, dtype=torch.int64)
    for pred_path, gt_path in pairs:
        confusion += _file_confusion(pred_path, gt_path, size, ignore_index)
    if n_classes is None:
        seen = ((confusion.sum(0) + confusion.sum(1)) > 0).nonzero()
        n_classes = 1 + int(seen.max()) if len(seen) else 1
        confusion = confusion[:n_classes, :n_classes].contiguous()
    iou = iou_from_confusion(confusion)
    return {
        "images": len(pairs),
        "missing_predictions": missing,
        "n_classes": n_classes,
        "confusion_matrix": confusion.tolist(),
        "per_class_iou": [None if v != v else 100 * v for v in iou.tolist()],
        "miou": 100 * mean_iou(confusion),
    }
