"""Argument checks shared by the methods and their blocks: TypeError for the
wrong kind of value, ValueError for a wrong value, each naming the argument.

Value checks (finite, in range, multi-hot) go through wsss_ext's
``require_all``, so they follow ``wsss_ext.set_check_finite``: an immediate
ValueError on CPU tensors, an asynchronous device assertion on CUDA ones (no
host synchronisation in a training step), nothing under torch.compile."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from wsss_ext.ops._checks import check_int, check_real, require_all, require_finite

__all__ = [
    "check_batch",
    "check_float",
    "check_images",
    "check_int",
    "check_label_map",
    "check_maps",
    "check_probs",
    "check_real",
    "check_tags",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {value.layout}")
    return value


def check_float(value: object, name: str) -> Tensor:
    """A float tensor of any shape, returned as it is; TypeError naming ``name`` otherwise."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    return value


def check_images(images: object, name: str = "images", *, values: bool = True) -> Tensor:
    """B x 3 x H x W float RGB in [0, 1], finite, H and W >= 1 (``values=False``:
    the kind and shape only, for a caller that checks the values of a smaller copy)."""
    images = _tensor(images, name)
    if images.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float RGB in [0, 1] (B x 3 x H x W), got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be B x 3 x H x W, got shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    if not values:
        return images
    require_finite(images, f"{name} has NaN or infinite values")
    require_all(images, lambda x: (x >= -1e-3) & (x <= 1 + 1e-3),
                lambda: f"{name} must be RGB in [0, 1] (methods normalise it themselves), "
                        f"got values in [{float(images.min()):.3g}, {float(images.max()):.3g}]")
    return images


def check_tags(labels: object, batch_size: int, num_classes: int, name: str = "labels") -> Tensor:
    """B x C image-level tags, multi-hot (bool, integer or float 0/1); returned as float."""
    labels = _tensor(labels, name)
    if labels.dim() != 2 or labels.shape != (batch_size, num_classes):
        raise ValueError(f"{name} must be B x C = {batch_size} x {num_classes} multi-hot tags, "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_complex():
        raise TypeError(f"{name} must be bool, integer or float, got {labels.dtype}")
    values = labels.float()
    require_all(values, lambda v: (v == 0) | (v == 1), f"{name} must hold only 0 and 1 (multi-hot tags)")
    return values


def check_maps(value: object, name: str) -> Tensor:
    """A float B x C x H x W tensor with C, H, W >= 1 (scores, CAMs, images)."""
    value = _tensor(value, name)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    if value.dim() != 4 or value.shape[1] == 0 or value.shape[2] * value.shape[3] == 0:
        raise ValueError(f"{name} must be B x C x H x W with C, H, W >= 1, got shape {tuple(value.shape)}")
    return value


def check_probs(probs: object, name: str = "probs", *, ndim: int = 4) -> Tensor:
    """A float tensor of probabilities in [0, 1] of rank ``ndim``, finite."""
    probs = _tensor(probs, name)
    if probs.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float tensor, got dtype {probs.dtype}")
    if probs.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D (B x C x H x W), got shape {tuple(probs.shape)}")
    require_finite(probs, f"{name} has NaN or infinite values")
    require_all(probs, lambda p: (p >= 0) & (p <= 1 + 1e-4),
                lambda: f"{name} must be probabilities in [0, 1], got values in "
                        f"[{float(probs.min()):.3g}, {float(probs.max()):.3g}]")
    return probs


def check_label_map(label_map: object, name: str, *, num_labels: int, ignore_index: int = 255,
                    shape: tuple[int, ...] | None = None) -> Tensor:
    """B x H x W integer labels in [0, num_labels) or ``ignore_index``; returned as int64."""
    label_map = _tensor(label_map, name)
    if label_map.dtype.is_floating_point or label_map.dtype == torch.bool or label_map.is_complex():
        raise TypeError(f"{name} must be an integer label map, got dtype {label_map.dtype}")
    if label_map.dim() != 3 or (shape is not None and tuple(label_map.shape) != tuple(shape)):
        expected = " x ".join(map(str, shape)) if shape is not None else "B x H x W"
        raise ValueError(f"{name} must be {expected}, got shape {tuple(label_map.shape)}")
    label_map = label_map.long()
    require_all(label_map, lambda m: (m >= 0) & (m < num_labels) | (m == ignore_index),
                f"{name} must hold labels in [0, {num_labels}) or {ignore_index} (ignore)")
    return label_map


def check_batch(batch: object, keys: Mapping[str, str], method: str) -> None:
    """A dict holding every key a method reads; ``keys`` maps each to its description."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict, got {type(batch).__name__}")
    missing = [key for key in keys if key not in batch]
    if missing:
        described = "; ".join(f"{key!r}: {keys[key]}" for key in missing)
        raise ValueError(f"batch lacks {missing} that {method} reads ({described})")
