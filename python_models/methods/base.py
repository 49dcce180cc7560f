"""The contract every method follows.

A method is a plain ``nn.Module`` (no training framework):

- ``DEFAULTS``: its published hyper-parameters (each with its source in the
  class docstring); keyword arguments override them, and an unknown keyword
  is a ``TypeError`` naming it. The resolved values are in ``self.config``.
- ``KERNELS``: the wsss_ext ops it runs inside ``losses()`` or ``pseudo_labels()``.
- ``BATCH_KEYS``: the keys ``losses()`` reads, with what each holds;
  ``example_batch()`` makes a valid batch.
- ``forward``: pure. It changes no parameter or buffer, except BatchNorm's
  running statistics in train mode (PyTorch's convention; in eval mode nothing).
- ``losses(batch, step=0)``: the named terms and their total under ``"loss"``.
- ``after_step(step, max_steps)``: the only place state changes (schedules,
  EMA, queues), called once per optimizer step.
- WSSS methods add ``cams(images, labels)`` (B x C x H x W in [0, 1], zero
  for classes not in the tags) and ``pseudo_labels(images, labels)``
  (B x H x W int64: 0 background, c + 1 for tag column c, 255 ignored).

Images are B x 3 x H x W float RGB in [0, 1]; each method normalises them
for its backbone itself (ImageNet mean and std), so the dense CRF and PAMR see
the same pixels the user passed. Tags are B x C multi-hot.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from python_models._checks import check_batch, check_images, check_tags
from python_models.backbones import build_backbone
from python_models.pseudo.cams import multiscale_cams, normalize_cams
from python_models.pseudo.confident import confident_labels

__all__ = ["IGNORE_INDEX", "Method", "WSSSMethod", "synthetic_tagged_batch"]

IGNORE_INDEX = 255

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Method(nn.Module):
    """Base of every method; see the module docstring for the contract."""

    KEY: ClassVar[str] = ""
    PAPER: ClassVar[str] = ""
    DEFAULTS: ClassVar[Mapping[str, Any]] = {}
    KERNELS: ClassVar[tuple[str, ...]] = ()
    BATCH_KEYS: ClassVar[Mapping[str, str]] = {}
    TINY_BACKBONE: ClassVar[str] = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__()
        unknown = sorted(set(overrides) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {unknown}; "
                            f"its settings are {sorted(self.DEFAULTS)}")
        self.config = types.SimpleNamespace(**{**self.DEFAULTS, **overrides})
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def build_backbone(self, output_stride: int | None = None) -> nn.Module:
        """``self.config.backbone`` as a module (``"tiny"``: ``TINY_BACKBONE``)."""
        return build_backbone(self.config.backbone, tiny=self.TINY_BACKBONE, output_stride=output_stride)

    def normalize(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] to the backbone's input (ImageNet mean and std)."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        check_batch(batch, self.BATCH_KEYS, type(self).__name__)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define example_batch()")

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define losses()")

    def after_step(self, step: int, max_steps: int) -> None:
        """Update schedules and state once per optimizer step; nothing by default."""

    def extra_repr(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self.config).items()
                             if not isinstance(value, nn.Module))
        return f"key={self.KEY!r}, {settings}"


class WSSSMethod(Method):
    """A method trained from image-level tags (or boxes) that yields CAMs and
    pseudo-masks. Subclasses define ``raw_cams(images)`` (B x C x h x w
    before ReLU, on normalised images) and ``forward`` (logits).

    Its ``DEFAULTS`` hold ``num_classes`` and ``backbone``; those of
    ``cams`` and ``pseudo_labels`` (``cam_scales``, ``cam_flip``,
    ``fg_threshold``, ``bg_threshold``, ``crf``) where it uses this class's rules.
    """

    BATCH_KEYS: ClassVar[Mapping[str, str]] = {
        "images": "B x 3 x H x W float RGB in [0, 1]",
        "labels": "B x C multi-hot image-level tags",
    }

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def check_inputs(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Images B x 3 x H x W in [0, 1] and tags B x num_classes (as float), checked."""
        images = check_images(images)
        if labels is not None:
            labels = check_tags(labels, images.shape[0], self.num_classes)
        return images, labels

    def raw_cams(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define raw_cams()")

    def cams(self, images: Tensor, labels: Tensor, scales: Sequence[float] | None = None,
             flip: bool | None = None) -> Tensor:
        """Multi-scale, flipped CAMs at the images' size, each class divided by
        its max and zero outside the tags: B x C x H x W in [0, 1].

        ``scales`` and ``flip`` default to ``config.cam_scales`` / ``config.cam_flip``."""
        images, labels = self.check_inputs(images, labels)
        scales = self.config.cam_scales if scales is None else scales
        flip = self.config.cam_flip if flip is None else flip
        total = multiscale_cams(self.raw_cams, self.normalize(images), scales, flip)
        return normalize_cams(total, labels)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """IRNet's confident labels from the CAMs (``step/cam_to_ir_label.py``):
        CRF-refined seeds at ``config.fg_threshold`` and ``config.bg_threshold``,
        foreground where the first says so, background where both do, 255
        between (:func:`python_models.pseudo.confident_labels`).
        Returns B x H x W int64."""
        images, labels = self.check_inputs(images, labels)
        return confident_labels(images, self.cams(images, labels), labels, self.config.fg_threshold,
                                self.config.bg_threshold, self.config.crf)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``images`` (B x 3 x S x S in [0, 1]), ``labels`` (B x C tags) and
        ``masks`` (B x S x S ground truth, for tests): see :func:`synthetic_tagged_batch`."""
        return synthetic_tagged_batch(batch_size, image_size, self.num_classes, generator)


def synthetic_tagged_batch(batch_size: int = 2, image_size: int = 32, num_classes: int = 20,
                           generator: torch.Generator | None = None, max_objects: int = 2) -> dict[str, Tensor]:
    """A batch of images with one or two axis-aligned objects each, coloured by class.

    Returns a dict: ``images`` B x 3 x S x S float in [0, 1] (noisy grey
    background, each class a fixed colour), ``labels`` B x C multi-hot tags,
    ``masks`` B x S x S int64 (0 background, c + 1), ``boxes`` B x N x 4
    (x0, y0, x1, y1 in pixels, exclusive ends) and ``box_classes`` B x N
    int64 (tag column, -1 for padding).
    """
    if batch_size < 1 or image_size < 4 or num_classes < 1:
        raise ValueError(f"need batch_size >= 1, image_size >= 4, num_classes >= 1; got "
                         f"{batch_size}, {image_size}, {num_classes}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    palette = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(1234)) * 0.8 + 0.1
    images = 0.5 + 0.08 * torch.randn(batch_size, 3, image_size, image_size, generator=g)
    masks = torch.zeros(batch_size, image_size, image_size, dtype=torch.long)
    labels = torch.zeros(batch_size, num_classes)
    boxes = torch.zeros(batch_size, max_objects, 4)
    box_classes = torch.full((batch_size, max_objects), -1, dtype=torch.long)
    for b in range(batch_size):
        count = int(torch.randint(1, min(max_objects, num_classes) + 1, (1,), generator=g))
        classes = torch.randperm(num_classes, generator=g)[:count]
        for n, c in enumerate(classes.tolist()):
            side = torch.randint(image_size // 4, image_size // 2 + 1, (2,), generator=g)
            corner = [int(torch.randint(0, image_size - int(s) + 1, (1,), generator=g)) for s in side]
            y0, x0 = corner
            y1, x1 = y0 + int(side[0]), x0 + int(side[1])
            images[b, :, y0:y1, x0:x1] = palette[c].view(3, 1, 1) + 0.05 * torch.randn(3, y1 - y0, x1 - x0, generator=g)
            masks[b, y0:y1, x0:x1] = c + 1
            boxes[b, n] = torch.tensor([x0, y0, x1, y1], dtype=torch.float)
            box_classes[b, n] = c
    # A later object may hide an earlier one: the tags (and boxes) are the classes still visible.
    for b in range(batch_size):
        visible = [c - 1 for c in masks[b].unique().tolist() if c > 0]
        labels[b, visible] = 1
        hidden = ~torch.isin(box_classes[b], torch.tensor(visible, dtype=torch.long))
        box_classes[b, hidden], boxes[b, hidden] = -1, 0
    return {"images": images.clamp(0, 1), "labels": labels, "masks": masks, "boxes": boxes,
            "box_classes": box_classes}
