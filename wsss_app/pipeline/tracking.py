"""``wsss-ext track``: a first-frame mask propagated through a folder of frames.

Frames are the folder's JPEG / PNG / BMP files in name order (DAVIS names
them 00000.jpg, 00001.jpg, ...; hidden files are left out). A frame that
cannot be read is reported by name and skipped, the others forming the
sequence; frames of different sizes are an error naming the file, raised
before anything is written. The first readable frame is the one the first
mask annotates.

The first mask is a label map: a palette (or grey) PNG whose pixel values
are the labels (0 background, 1..K the objects), as DAVIS and VOC store
them, or an RGB image in VOC's colours (label l drawn in ``VOC_PALETTE[l]``).
A palette index beyond the file's own palette, or a colour VOC's palette
lacks, is an error; 255 (VOC's "void") counts as background.

The masks are written as VOC-palette PNGs ``<out>/<stem>.png``, one per frame
(the first frame's is the given mask), each atomically. With ``--gt`` the
masks are scored against ``<gt>/<stem>.png`` by the DAVIS 2017
semi-supervised protocol (:func:`wsss_ext.metrics.davis_scores`: J, F and
J&F over the objects of the first mask, the first and last frames left out).

Checkpoints (written by ``wsss-ext demo --task video``, read by ``--checkpoint``)
are ``torch.save`` files of ``{"method": key, "overrides": dict, "state_dict": ...}``:
the method is re-created as ``python_models.create(key, **overrides)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsss_ext.io import (
    IMAGE_SUFFIXES,
    VOC_PALETTE,
    BadFileError,
    atomic_write,
    open_image,
    prepare_output_dir,
    read_image,
    read_label_map,
    write_label_map,
)
from wsss_ext.metrics import davis_scores, davis_summary
from wsss_app.pipeline.training import bar

__all__ = [
    "TrackSummary",
    "frame_paths",
    "load_checkpoint",
    "load_video_method",
    "read_first_mask",
    "read_frames",
    "save_checkpoint",
    "score_against_folder",
    "track_folder",
    "track_frames",
]

DEFAULT_METHOD = "mast"
VOID_LABEL = 255


@dataclass
class TrackSummary:
    method: str
    trained: bool
    n_objects: int
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason
    scores: dict | None = None  # davis_summary(...) plus "frames_scored" and "missing_gt", with --gt
    seconds: float = 0.0


# --- reading ---------------------------------------------------------------------------------------------


def frame_paths(folder: str | os.PathLike) -> list[Path]:
    """The folder's image files (JPEG / PNG / BMP, hidden files left out) in name order."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"--frames {folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"--frames {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise ValueError(f"--frames {folder}: no frames in it (JPEG, PNG or BMP files)")
    return paths


def read_frames(paths: list[Path], progress: bool = False) -> tuple[list[Path], np.ndarray, dict[str, str]]:
    """(the paths read, T x H x W x 3 uint8 frames, {name: why} of the frames skipped).

    Unreadable frames are skipped; a frame whose size differs from the first
    readable one raises ValueError naming both."""
    kept, frames, skipped = [], [], {}
    for path in bar(paths, progress, desc="reading frames", unit="frame", leave=False):
        try:
            frame = read_image(path)
        except BadFileError as error:
            skipped[path.name] = error.reason
            continue
        if frames and frame.shape != frames[0].shape:
            raise ValueError(f"{path.name} is {frame.shape[1]} x {frame.shape[0]} but {kept[0].name} is "
                             f"{frames[0].shape[1]} x {frames[0].shape[0]}: all frames must have one size")
        kept.append(path)
        frames.append(frame)
    if not frames:
        raise ValueError(f"no frame could be read ({len(paths)} skipped: " +
                         "; ".join(f"{name}: {why}" for name, why in list(skipped.items())[:3]) + ")")
    return kept, np.stack(frames), skipped


def _labels_from_colours(colours: np.ndarray, path: Path) -> np.ndarray:
    """H x W labels of an RGB mask drawn in VOC's colours."""
    codes = (colours[..., 0].astype(np.int64) << 16) | (colours[..., 1].astype(np.int64) << 8) | colours[..., 2]
    voc = (VOC_PALETTE[:, 0].astype(np.int64) << 16) | (VOC_PALETTE[:, 1].astype(np.int64) << 8) | VOC_PALETTE[:, 2]
    order = np.argsort(voc)
    position = np.searchsorted(voc[order], codes).clip(max=len(voc) - 1)
    known = voc[order][position] == codes
    if not known.all():
        unknown, counts = np.unique(codes[~known], return_counts=True)
        listed = ", ".join(f"RGB ({c >> 16}, {(c >> 8) & 255}, {c & 255}) at {n} pixels"
                           for c, n in list(zip(unknown.tolist(), counts.tolist()))[:3])
        raise ValueError(f"--first-mask {path}: holds {len(unknown)} colours the VOC palette lacks ({listed}); "
                         "draw label l in VOC_PALETTE[l], or save a palette PNG of the labels")
    return order[position].astype(np.int64)


def read_first_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """H x W int64 labels of the first frame (see the module docstring);
    ``size`` (H, W) is the frames' size it must have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--first-mask {path}: no such file")
    with open_image(path, "first mask") as image:  # the header only: mode and palette
        mode, palette = image.mode, image.getpalette() if image.mode == "P" else None
    if mode in ("RGB", "RGBA"):
        labels = _labels_from_colours(read_image(path), path)
    else:
        labels = read_label_map(path)
        if palette is not None and int(labels.max()) >= len(palette) // 3:
            raise ValueError(f"--first-mask {path}: holds label {int(labels.max())} but its palette has only "
                             f"{len(palette) // 3} colours")
    if size is not None and labels.shape != tuple(size):
        raise ValueError(f"--first-mask {path} is {labels.shape[1]} x {labels.shape[0]} but the frames are "
                         f"{size[1]} x {size[0]}")
    labels = np.where(labels == VOID_LABEL, 0, labels)
    if int(labels.max()) == 0:
        raise ValueError(f"--first-mask {path}: no object in it (every pixel is background 0 or void 255)")
    return labels


# --- methods and checkpoints -----------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, method: str, overrides: dict, model: nn.Module) -> None:
    """Write the checkpoint format ``--checkpoint`` reads, atomically."""
    state = {"method": method, "overrides": dict(overrides),
             "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}}
    with atomic_write(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's dict, read without unpickling code (``weights_only``), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds on a bad file (pickle, zip, runtime)
        raise ValueError(f"--checkpoint {path}: cannot read it ({type(error).__name__}: {error})") from None
    if (not isinstance(state, dict) or not isinstance(state.get("method"), str)
            or not isinstance(state.get("overrides", {}), dict) or not isinstance(state.get("state_dict"), dict)):
        raise ValueError(f"--checkpoint {path}: not a wsss-ext checkpoint "
                         '({"method": key, "overrides": dict, "state_dict": ...})')
    return state


def load_video_method(method: str | None = None, checkpoint: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu") -> tuple[nn.Module, str, bool]:
    """(the method in eval mode on ``device``, its key, whether weights were loaded).

    Without a checkpoint the method is ``create(method)`` with random weights.
    With one, ``method`` (if given) must be the checkpoint's."""
    import python_models

    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None and method is not None and method != state["method"]:
        raise ValueError(f"--method {method} but the checkpoint {checkpoint} holds a {state['method']} network")
    key = state["method"] if state is not None else (method or DEFAULT_METHOD)
    if key not in python_models.METHODS:
        raise ValueError(f"unknown method {key!r}; video methods: {_video_method_keys()}")
    model = python_models.create(key, **(state["overrides"] if state is not None else {}))
    if not _is_video_method(model):
        raise ValueError(f"{key} is not a video method (it has no track()); video methods: {_video_method_keys()}")
    if state is not None:
        try:
            model.load_state_dict(state["state_dict"])
        except RuntimeError as error:
            raise ValueError(f"--checkpoint {checkpoint}: its weights do not fit {key} "
                             f"with overrides {state['overrides']} ({error})") from None
    return model.to(device).eval(), key, state is not None


def _is_video_method(model: nn.Module) -> bool:
    import python_models

    base = getattr(python_models, "VideoMethod", None)
    return isinstance(model, base) if base is not None else callable(getattr(model, "track", None))


def _video_method_keys() -> list[str]:
    import python_models

    base = getattr(python_models, "VideoMethod", None)
    if base is None:
        return []
    return sorted(key for key, cls in python_models.METHODS.items() if isinstance(cls, type) and issubclass(cls, base))


# --- tracking and scoring --------------------------------------------------------------------------------


@torch.no_grad()
def track_frames(model: nn.Module, frames: np.ndarray | torch.Tensor, first_labels: np.ndarray | torch.Tensor,
                 device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """T x H x W int64 (on the CPU): ``model.track`` on T x H x W x 3 uint8 frames
    (or T x 3 x H x W) from the H x W first-frame labels.

    The methods need sides that are multiples of their feature stride (a
    480 x 854 DAVIS frame is not): frames and first labels are padded at the
    bottom and right by repeating the last row and column, and the masks
    cropped back."""
    frames = torch.as_tensor(frames)
    if frames.dim() == 4 and frames.shape[-1] == 3 and frames.shape[1] != 3:
        frames = frames.permute(0, 3, 1, 2)
    first_labels = torch.as_tensor(first_labels).long()
    height, width = first_labels.shape
    stride = int(getattr(model, "STRIDE", 1))
    pad = (0, -width % stride, 0, -height % stride)
    video = frames.to(device).float().div_(255)
    first = first_labels.to(device)
    if any(pad):
        video = torch.nn.functional.pad(video, pad, mode="replicate")
        first = torch.nn.functional.pad(first[None, None].float(), pad, mode="replicate")[0, 0].long()
    labels = model.track(video, first, n_labels=int(first_labels.max()) + 1, progress=progress)
    return labels[:, :height, :width].cpu()


def score_against_folder(labels: torch.Tensor, stems: list[str], gt_dir: str | os.PathLike,
                         n_objects: int) -> dict:
    """DAVIS's J, F and J&F of T x H x W ``labels`` (frames named ``stems``)
    against ``<gt_dir>/<stem>.png``. The first and last frames are left out;
    middle frames without a ground-truth file are listed in ``missing_gt``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise NotADirectoryError(f"--gt {gt_dir}: not a folder")
    if len(stems) < 3:
        raise ValueError(f"scoring needs at least 3 frames (DAVIS leaves out the first and last), got {len(stems)}")
    kept, truths, missing = [], [], []
    for index in range(1, len(stems) - 1):
        path = gt_dir / f"{stems[index]}.png"
        if not path.exists():
            missing.append(path.name)
            continue
        truth = read_label_map(path)
        if truth.shape != tuple(labels.shape[1:]):
            raise ValueError(f"--gt {path} is {truth.shape[1]} x {truth.shape[0]} but the frames are "
                             f"{labels.shape[2]} x {labels.shape[1]}")
        kept.append(index)
        truths.append(torch.from_numpy(truth))
    if not kept:
        raise ValueError(f"--gt {gt_dir}: none of the frames between the first and the last has a ground truth "
                         f"<stem>.png")
    scores = davis_scores(labels[kept], torch.stack(truths), n_objects=n_objects, skip_first_last=False)
    return {**davis_summary([scores]), "frames_scored": len(kept), "missing_gt": missing}


def track_folder(frames_dir, first_mask, out_dir, *, method: str | None = None, checkpoint=None,
                 device: str = "cpu", gt_dir=None, progress: bool = False) -> TrackSummary:
    """Propagate ``first_mask`` through ``frames_dir`` into ``out_dir`` (see the module docstring)."""
    start = time.perf_counter()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here")
    paths = frame_paths(frames_dir)
    kept, frames, skipped = read_frames(paths, progress)
    if paths[0] not in kept:
        raise ValueError(f"the first frame {paths[0].name} (the one --first-mask annotates) cannot be read: "
                         f"{skipped[paths[0].name]}")
    first = read_first_mask(first_mask, frames.shape[1:3])
    if gt_dir is not None and not Path(gt_dir).is_dir():
        raise NotADirectoryError(f"--gt {gt_dir}: not a folder")
    out_dir = prepare_output_dir(out_dir, "--out")
    model, key, trained = load_video_method(method, checkpoint, device)
    labels = track_frames(model, frames, first, device, progress)
    summary = TrackSummary(method=key, trained=trained, n_objects=int(first.max()), skipped=skipped)
    stems = [path.stem for path in kept]
    for stem, label_map in bar(list(zip(stems, labels.numpy())), progress, desc="writing", unit="mask", leave=False):
        write_label_map(label_map, out_dir / f"{stem}.png")
        summary.written.append(f"{stem}.png")
    if gt_dir is not None:
        summary.scores = score_against_folder(labels, stems, gt_dir, summary.n_objects)
    summary.seconds = time.perf_counter() - start
    return summary
