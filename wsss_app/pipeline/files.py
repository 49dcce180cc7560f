"""``wsss-ext refine`` and ``wsss-ext evaluate`` on folders of files.

CAM files: ``<stem>.npy`` beside each image ``<stem>.jpg|png``, holding one
float array C x h x w: the CAMs of the dataset's C foreground classes (channel
c is label c + 1; label 0 is the background, derived by the chain's
background threshold), any resolution (resized bilinearly to the image),
non-negative; each channel is divided by its maximum, so an all-zero channel
is a class the image does not have. Outputs are palette PNGs with PASCAL
VOC's colours, ``<stem>.png``, written atomically.

Files are processed independently: a file that cannot be read, a CAM of the
wrong shape, an image without a CAM (or a CAM without an image) is reported
by name and skipped, and the rest goes on. Under ``torchrun`` each process
takes every world_size-th file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_ext.io import IMAGE_SUFFIXES, read_image, read_label_map, write_label_map, write_overlay
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou
from wsss_app.pipeline.chains import ChainSettings, parse_chain, refine

__all__ = ["RefineSummary", "evaluate_folders", "pair_files", "refine_folder"]


@dataclass
class RefineSummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason


def pair_files(images_dir: Path, cams_dir: Path) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """(image, cam) pairs matched by file stem, and the unmatched files with why."""
    images = {p.stem: p for p in sorted(Path(images_dir).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    cams = {p.stem: p for p in sorted(Path(cams_dir).iterdir()) if p.suffix == ".npy"}
    unmatched = {images[s].name: "no CAM file <stem>.npy for it" for s in sorted(images.keys() - cams.keys())}
    unmatched.update({cams[s].name: "no image with its stem" for s in sorted(cams.keys() - images.keys())})
    return [(images[s], cams[s]) for s in sorted(images.keys() & cams.keys())], unmatched


def _load_cam(path: Path, size: tuple[int, int]) -> torch.Tensor:
    try:
        cam = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the CAM array ({error})") from error
    if cam.ndim != 3 or cam.shape[0] < 1 or cam.dtype.kind not in "fiu":
        raise ValueError(f"a CAM must be a C x h x w numeric array, got {cam.dtype} {cam.shape}")
    cam = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))
    if not bool(torch.isfinite(cam).all()) or bool((cam < 0).any()):
        raise ValueError("a CAM must hold finite, non-negative values")
    cam = F.interpolate(cam[None], size=size, mode="bilinear", align_corners=False)[0]
    return cam / cam.flatten(1).amax(1).clamp(min=1e-5)[:, None, None]


def refine_folder(images_dir, cams_dir, out_dir, chain: str = "cam+crf", device: str = "cpu", batch_size: int = 8,
                  overlays: bool = False, rank: int = 0, world_size: int = 1, progress: bool = False,
                  settings: ChainSettings | None = None) -> RefineSummary:
    """Refine this rank's share of the folder's CAMs; see the module docstring."""
    steps = parse_chain(chain)
    out_dir = Path(out_dir)
    pairs, unmatched = pair_files(Path(images_dir), Path(cams_dir))
    summary = RefineSummary(skipped=dict(unmatched) if rank == 0 else {})
    pairs = pairs[rank::world_size]
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"refining (rank {rank})" if world_size > 1 else "refining", unit="image")
    pending: list[tuple[str, np.ndarray, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        images = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for _, image, _ in pending]).to(device)
        labels = refine(images, torch.stack([cam for _, _, cam in pending]).to(device), steps, settings).cpu()
        for (stem, image, _), label_map in zip(pending, labels.numpy()):
            write_label_map(label_map, out_dir / f"{stem}.png")
            if overlays:
                write_overlay(image, label_map, out_dir / "overlays" / f"{stem}.png")
            summary.written.append(f"{stem}.png")
        pending.clear()

    for image_path, cam_path in pairs:
        try:
            image = read_image(image_path)
        except ValueError as error:
            summary.skipped[image_path.name] = str(error).split(": ", 1)[-1]
            continue
        try:
            cam = _load_cam(cam_path, image.shape[:2])
        except ValueError as error:
            summary.skipped[cam_path.name] = str(error)
            continue
        # A batch holds images of one size and one class count.
        if pending and (pending[0][1].shape != image.shape or pending[0][2].shape[0] != cam.shape[0]):
            flush()
        pending.append((image_path.stem, image, cam))
        if len(pending) == batch_size:
            flush()
    flush()
    return summary


def evaluate_folders(pred_dir, gt_dir, n_classes: int | None = None, ignore_index: int = 255) -> dict:
    """Confusion matrix, per-class IoU and mIoU of the prediction PNGs against
    the ground-truth PNGs of the same names (VOC evaluation)."""
    predictions = {p.stem: p for p in sorted(Path(pred_dir).glob("*.png"))}
    truths = {p.stem: p for p in sorted(Path(gt_dir).glob("*.png"))}
    missing = sorted(truths.keys() - predictions.keys())
    pairs = [(predictions[s], truths[s]) for s in sorted(truths.keys() & predictions.keys())]
    if not pairs:
        raise ValueError(f"no prediction in {pred_dir} has a ground truth of the same name in {gt_dir}")
    maps = []
    for pred_path, gt_path in pairs:
        pred, truth = read_label_map(pred_path), read_label_map(gt_path)
        if pred.shape != truth.shape:
            raise ValueError(f"{pred_path.name}: prediction {pred.shape} and ground truth {truth.shape} differ in size")
        maps.append((pred, truth))
    if n_classes is None:
        n_classes = 1 + max(int(np.max(np.where(t == ignore_index, 0, np.maximum(p, t)))) for p, t in maps)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    for pred, truth in maps:
        confusion += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), n_classes, ignore_index)
    iou = iou_from_confusion(confusion)
    return {
        "images": len(pairs),
        "missing_predictions": missing,
        "n_classes": n_classes,
        "confusion_matrix": confusion.tolist(),
        "per_class_iou": [None if v != v else 100 * v for v in iou.tolist()],
        "miou": 100 * mean_iou(confusion),
    }
