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

from python_models._checks import check_batch, check_images, check_int, check_tags
from python_models.backbones import build_backbone
from python_models.pseudo.cams import multiscale_cams, normalize_cams
from python_models.pseudo.confident import confident_labels

__all__ = ["IGNORE_INDEX", "Method", "VideoMethod", "WSSSMethod", "propagate_video", "synthetic_tagged_batch",
           "synthetic_video_batch"]

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


class VideoMethod(Method):
    """A self-supervised correspondence method for video label propagation
    (colorization, CorrFlow, MAST, SS-VOS).

    Training reads clips: ``frames`` B x T x 3 x H x W RGB in [0, 1]. At test
    time a first-frame label map is carried through a video by the learnt
    features (:meth:`track`).

    Subclasses define ``encode(images)``: B x 3 x H x W RGB in [0, 1] -> B x D x
    H/STRIDE x W/STRIDE (each applies its own input transform: Lab, lightness,
    ImageNet normalisation), ``losses`` and ``memory(t)``, the reference
    frames of target ``t`` with their coarse-search dilations. Their
    ``DEFAULTS`` hold ``test_radius`` (None: global), ``temperature`` and ``n_recent``, and
    ``BORDER`` is their border rule (``"zero"``: MAST; ``"exclude"``: CorrFlow).

    ``forward(images)`` is ``encode`` on checked images (pure); ``embed(frames)``
    the features of a T x 3 x H x W video, in eval mode and without gradient.
    """

    BATCH_KEYS: ClassVar[Mapping[str, str]] = {
        "frames": "B x T x 3 x H x W float RGB in [0, 1], a clip of video frames",
    }
    STRIDE: ClassVar[int] = 4
    BORDER: ClassVar[str] = "zero"
    CLIP_LENGTH: ClassVar[int] = 2
    TINY_BACKBONE = "resnet18_tiny"

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define encode()")

    def forward(self, images: Tensor) -> Tensor:
        """Features B x D x H/STRIDE x W/STRIDE of images B x 3 x H x W in [0, 1]."""
        return self.encode(check_images(images))

    def check_frames(self, frames: object, name: str = "frames", min_frames: int | None = None) -> Tensor:
        """A B x T x 3 x H x W clip in [0, 1] with T >= ``min_frames`` (default
        ``CLIP_LENGTH``) and H, W multiples of ``STRIDE``."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"{name} must be B x T x 3 x H x W, got shape {tuple(frames.shape)}")
        need = self.CLIP_LENGTH if min_frames is None else min_frames
        if frames.shape[1] < need:
            raise ValueError(f"{name} must hold at least {need} frames per clip, got {frames.shape[1]}")
        if frames.shape[-1] % self.STRIDE or frames.shape[-2] % self.STRIDE or frames.shape[-1] == 0:
            raise ValueError(f"{name} must have H and W positive multiples of the stride {self.STRIDE}, got "
                             f"{frames.shape[-2]} x {frames.shape[-1]}")
        check_images(frames.flatten(0, 1), name)
        return frames

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        """Features T x D x H/STRIDE x W/STRIDE of a video T x 3 x H x W, computed
        in eval mode (the mode is restored) without gradient."""
        frames = self.check_frames(frames.unsqueeze(0) if isinstance(frames, Tensor) and frames.dim() == 4
                                   else frames, "frames", 1)[0]
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.encode(chunk) for chunk in frames.split(8)])
        finally:
            self.train(was_training)

    def memory(self, t: int) -> list[tuple[int, int]]:
        """The references of target frame ``t`` as (frame index, coarse-search
        dilation; 0 = read in place): by default frame 0 and the
        ``config.n_recent`` latest frames, as ``wsss_ext.track_video`` keeps them."""
        recent = list(range(max(1, t - int(self.config.n_recent)), t))
        return [(0, 0)] + [(r, 0) for r in recent]

    def _first_labels(self, first_labels: object, size: tuple[int, int], n_labels: int | None) -> tuple[Tensor, int]:
        if not isinstance(first_labels, Tensor):
            raise TypeError(f"first_labels must be a torch.Tensor, got {type(first_labels).__name__}")
        if first_labels.dtype.is_floating_point or first_labels.dtype == torch.bool or first_labels.is_complex():
            raise TypeError(f"first_labels must be an integer H x W label map, got dtype {first_labels.dtype}")
        if tuple(first_labels.shape) != tuple(size):
            raise ValueError(f"first_labels must be H x W = {size[0]} x {size[1]} (the frames' size), got shape "
                             f"{tuple(first_labels.shape)}")
        labels = first_labels.long()
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError("first_labels must hold non-negative labels")
        found = int(labels.max()) + 1
        if n_labels is None:
            n_labels = found
        n_labels = check_int(n_labels, "n_labels", minimum=1)
        if found > n_labels:
            raise ValueError(f"first_labels holds label {found - 1} but n_labels is {n_labels}")
        return labels, n_labels

    @torch.no_grad()
    def track(self, frames: Tensor, first_labels: Tensor, n_labels: int | None = None,
              progress: bool = False) -> Tensor:
        """Propagate a first-frame label map through a video with the method's
        published test settings.

        Every target frame reads its references (:meth:`memory`: frame index and
        coarse-search dilation) through :func:`python_models.heads.read_memory`
        (``wsss_ext.propagate_labels``, radius ``config.test_radius``, the
        method's ``BORDER`` rule); the result is upsampled (bilinear) and
        argmaxed, and a predicted frame is stored as the one-hot of that hard
        label map, resized to the feature grid (bilinear), as MAST and
        CorrFlow feed their argmaxed outputs back.

        Args:
            frames: T x 3 x H x W RGB in [0, 1], H and W multiples of ``STRIDE``.
            first_labels: H x W integer labels of frame 0 (0 background, objects 1..).
            n_labels: labels in the video (default: first_labels' maximum + 1).
            progress: a tqdm progress bar.

        Returns:
            T x H x W int64 label maps; frame 0 is ``first_labels``.
        """
        from python_models.heads.correspondence import read_memory

        if isinstance(frames, Tensor) and frames.dim() != 4:
            raise ValueError(f"frames must be T x 3 x H x W, got shape {tuple(frames.shape)}")
        frames = self.check_frames(frames.unsqueeze(0) if isinstance(frames, Tensor) else frames, "frames", 1)[0]
        size = tuple(frames.shape[-2:])
        labels, n_labels = self._first_labels(first_labels, size, n_labels)
        features = self.embed(frames)
        return propagate_video(features, labels.to(features.device), n_labels, self.memory, read_memory,
                               radius=self.window_radius(self.config.test_radius, features.shape[-2:]),
                               temperature=float(self.config.temperature), border=self.BORDER, progress=progress)

    @staticmethod
    def window_radius(radius: int | None, grid: tuple[int, int]) -> int:
        """``radius``, or for ``None`` (global attention) the smallest window that
        covers a ``grid`` feature map from every pixel, ``max(h, w) - 1``, capped
        at the kernel's largest radius 64."""
        if radius is not None:
            return check_int(radius, "radius", minimum=0)
        return min(max(int(grid[0]), int(grid[1])) - 1, 64)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``frames`` (B x T x 3 x S x S, T = ``CLIP_LENGTH``), ``masks`` (B x T x S x S,
        the moving square) and ``images`` (the first frames, for ``forward``):
        see :func:`synthetic_video_batch`."""
        return synthetic_video_batch(batch_size, image_size, self.CLIP_LENGTH, generator)


def one_hot_to_grid(labels: Tensor, n_labels: int, size: tuple[int, int]) -> Tensor:
    """H x W integer labels -> n_labels x h x w one-hot maps resized to ``size`` (bilinear)."""
    one_hot = torch.nn.functional.one_hot(labels.long(), n_labels).permute(2, 0, 1)[None].float()
    if tuple(one_hot.shape[-2:]) != tuple(size):
        one_hot = torch.nn.functional.interpolate(one_hot, size=size, mode="bilinear", align_corners=False)
    return one_hot[0]


def propagate_video(features: Tensor, first_labels: Tensor, n_labels: int, memory, read, *, radius: int,
                    temperature: float = 1.0, border: str = "zero", progress: bool = False) -> Tensor:
    """The tracking loop of :meth:`VideoMethod.track` on precomputed T x D x h x w
    features: ``memory(t)`` gives target t's (reference, dilation) pairs,
    ``read(query, keys, values, radius, dilations, temperature, border)`` the
    propagated soft labels (:func:`python_models.heads.read_memory`).
    Returns T x H x W int64 (H x W = first_labels' size)."""
    size = tuple(first_labels.shape)
    grid = tuple(features.shape[-2:])
    stored = [one_hot_to_grid(first_labels, n_labels, grid)]
    outputs = [first_labels.long()]
    steps = range(1, features.shape[0])
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tracking", unit="frame", leave=False)
    for t in steps:
        refs = memory(t)
        soft = read(features[t][None], [features[r][None] for r, _ in refs], [stored[r][None] for r, _ in refs],
                    radius, [d for _, d in refs], temperature, border)
        hard = torch.nn.functional.interpolate(soft, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        outputs.append(hard)
        stored.append(one_hot_to_grid(hard, n_labels, grid))
    return torch.stack(outputs)


def synthetic_video_batch(batch_size: int = 2, image_size: int = 32, frames: int = 3,
                          generator: torch.Generator | None = None, speed: int = 1) -> dict[str, Tensor]:
    """Clips of a smooth random colour texture translating by ``speed`` pixels
    per frame, with a flat-coloured square moving the other way over it.

    Returns a dict: ``frames`` B x T x 3 x S x S float in [0, 1], ``masks``
    B x T x S x S int64 (1 on the square, 0 elsewhere) and ``images``
    (``frames[:, 0]``). Shifts are whole pixels, so frame t + 1 equals frame t
    moved exactly (apart from what enters at the border).
    """
    if batch_size < 1 or image_size < 8 or frames < 1:
        raise ValueError(f"need batch_size >= 1, image_size >= 8, frames >= 1; got {batch_size}, {image_size}, "
                         f"{frames}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    travel = speed * (frames - 1)
    canvas = image_size + travel
    coarse = torch.rand(batch_size, 3, max(2, canvas // 4), max(2, canvas // 4), generator=g)
    texture = torch.nn.functional.interpolate(coarse, size=(canvas, canvas), mode="bilinear", align_corners=False)
    side = max(2, image_size // 4)
    clips = torch.empty(batch_size, frames, 3, image_size, image_size)
    masks = torch.zeros(batch_size, frames, image_size, image_size, dtype=torch.long)
    for b in range(batch_size):
        colour = torch.rand(3, generator=g) * 0.8 + 0.1
        y0 = int(torch.randint(0, image_size - side - travel + 1, (1,), generator=g)) if image_size > side + travel else 0
        x0 = int(torch.randint(travel, image_size - side + 1, (1,), generator=g)) if image_size > side + travel else 0
        for t in range(frames):
            shift = speed * t
            clips[b, t] = texture[b, :, shift:shift + image_size, shift:shift + image_size]
            y, x = y0 + shift, x0 - shift
            clips[b, t, :, y:y + side, x:x + side] = colour.view(3, 1, 1)
            masks[b, t, y:y + side, x:x + side] = 1
    clips = clips.clamp(0, 1)
    return {"frames": clips, "masks": masks, "images": clips[:, 0]}
