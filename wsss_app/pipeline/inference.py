"""A trained run over a dataset, image by image: ``wsss-ext cams`` (the
method's multi-scale CAMs as ``<stem>.npy``, in the format ``wsss-ext refine``
reads) and ``wsss-ext pseudo-labels`` (its own pseudo-label rule as palette
PNGs, scored against the dataset's masks when it has them).

Images are taken at their own size (one at a time, as irn's ``make_cam.py``),
with the dataset's tags; a folder without tags gets every class of the run.
Under ``torchrun`` each process takes every world_size-th image. A file that
cannot be read is reported by name and skipped; every output is written
atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_app.pipeline.datasets import TaggedDataset, open_dataset
from wsss_ext.distributed import gather_objects
from wsss_ext.io import write_array, write_label_map
from wsss_ext.metrics import confusion_matrix

__all__ = ["InferenceSummary", "gather_summaries", "open_for_run", "write_cams", "write_pseudo_labels"]


@dataclass
class InferenceSummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason
    # Against the data's masks, when it has them: the (C + 1) x (C + 1) confusion over the pixels both the mask
    # and the pseudo-mask label, the pixels the masks label, and those of them the pseudo-masks leave at 255.
    confusion: torch.Tensor | None = None
    truth_pixels: int = 0
    ignored_pixels: int = 0


def open_for_run(path: str, config: dict, split: str | None = None) -> TaggedDataset:
    """The dataset at ``path`` mapped onto a run's classes (a plain image
    folder allowed: every image tagged with every class).

    Raises:
        ValueError: the data tags images with classes the run was not trained
            on (naming them and a few of the images), besides open_dataset's errors.
    """
    dataset = open_dataset(path, split, classes=config["classes"], tags_required=False)
    if dataset.unknown_classes:
        named = "; ".join(f"{name!r} ({', '.join(images[:3])}{', ...' if len(images) > 3 else ''})"
                          for name, images in sorted(dataset.unknown_classes.items()))
        raise ValueError(f"{path} tags images with classes the run was not trained on: {named}; "
                         f"the run's classes are {config['classes']}")
    return dataset


def _image_tensor(dataset: TaggedDataset, index: int, device) -> torch.Tensor:
    return torch.from_numpy(dataset.read_image(index)).permute(2, 0, 1)[None].to(device).float() / 255


def _each_image(dataset: TaggedDataset, rank: int, world_size: int, progress: bool, desc: str,
                summary: InferenceSummary, work: Callable[[int, torch.Tensor, torch.Tensor], None],
                device) -> None:
    """Call ``work(index, image, tags)`` on this rank's share, skipping unreadable images by name."""
    tags = dataset.tags()
    indices = range(rank, len(dataset), world_size)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"{desc} (rank {rank})" if world_size > 1 else desc, unit="image")
    for index in indices:
        try:
            image = _image_tensor(dataset, index, device)
        except ValueError as error:  # wsss_ext.io.BadFileError: "<path>: <reason>"
            summary.skipped[dataset.samples[index].name] = getattr(error, "reason", str(error))
            continue
        work(index, image, tags[index : index + 1].to(device))


@torch.no_grad()
def write_cams(method, dataset: TaggedDataset, out_dir: Path, *, scales: Sequence[float] | None = None,
               flip: bool | None = None, stride: int = 4, device="cpu", rank: int = 0, world_size: int = 1,
               progress: bool = False) -> InferenceSummary:
    """``out_dir/<stem>.npy``: C x ceil(H / stride) x ceil(W / stride) float32
    CAMs of each image (``method.cams`` at ``scales`` with ``flip``, the
    method's published ones by default), zero for classes outside its tags.
    ``stride`` > 1 stores them smaller (``refine`` resizes them to the image;
    irn keeps its stride-4 ``cam`` arrays so)."""
    summary = InferenceSummary()

    def work(index: int, image: torch.Tensor, tags: torch.Tensor) -> None:
        cams = method.cams(image, tags, scales=scales, flip=flip)
        if stride > 1:
            size = (-(-image.shape[-2] // stride), -(-image.shape[-1] // stride))
            cams = F.interpolate(cams, size=size, mode="area")
        name = dataset.samples[index].name
        write_array(out_dir / f"{name}.npy", cams[0].float().cpu().numpy())
        summary.written.append(f"{name}.npy")

    _each_image(dataset, rank, world_size, progress, "CAMs", summary, work, device)
    return summary


@torch.no_grad()
def write_pseudo_labels(method, dataset: TaggedDataset, out_dir: Path, *, device="cpu", rank: int = 0,
                        world_size: int = 1, progress: bool = False) -> InferenceSummary:
    """``out_dir/<stem>.png``: ``method.pseudo_labels`` of each image (0
    background, c + 1 for class c, 255 ignored) as a palette PNG, and the
    confusion matrix against the dataset's masks where it has them (over the
    pixels the pseudo-mask labels; the share it leaves at 255 is counted)."""
    summary = InferenceSummary()
    n_labels = dataset.num_classes + 1
    if dataset.has_masks:
        summary.confusion = torch.zeros(n_labels, n_labels, dtype=torch.int64)

    def work(index: int, image: torch.Tensor, tags: torch.Tensor) -> None:
        labels = method.pseudo_labels(image, tags)[0].cpu()
        name = dataset.samples[index].name
        write_label_map(labels.numpy(), out_dir / f"{name}.png")
        summary.written.append(f"{name}.png")
        if summary.confusion is None or dataset.samples[index].mask is None:
            return
        try:
            truth = dataset.read_mask(index)
        except ValueError as error:
            summary.skipped[f"{name} (mask)"] = getattr(error, "reason", str(error))
            return
        if truth.shape != tuple(labels.shape):
            summary.skipped[f"{name} (mask)"] = f"mask {truth.shape} and image {tuple(labels.shape)} differ in size"
            return
        truth = torch.from_numpy(np.asarray(truth))
        valid = truth[truth != 255]
        if valid.numel() and int(valid.max()) >= n_labels:
            summary.skipped[f"{name} (mask)"] = f"mask labels above {n_labels - 1}, the run's classes"
            return
        known, ignored = truth != 255, labels == 255
        summary.truth_pixels += int(known.sum())
        summary.ignored_pixels += int((known & ignored).sum())
        # A pseudo-mask's 255 is "no label here", not a class: those pixels are counted apart, not scored.
        summary.confusion += confusion_matrix(labels, torch.where(ignored, 255, truth), n_labels, 255)

    _each_image(dataset, rank, world_size, progress, "pseudo-labels", summary, work, device)
    return summary


def gather_summaries(summary: InferenceSummary, world_size: int) -> InferenceSummary:
    """Every process's summary merged (on every process); the confusion matrices summed."""
    if world_size == 1:
        return summary
    merged = InferenceSummary()
    for part in gather_objects(summary, world_size):
        merged.written += part.written
        merged.skipped.update(part.skipped)
        if part.confusion is not None:
            merged.confusion = part.confusion if merged.confusion is None else merged.confusion + part.confusion
        merged.truth_pixels += part.truth_pixels
        merged.ignored_pixels += part.ignored_pixels
    return merged
