"""Views of a batch with an exact counterpart on maps: SEAM's rescaled view
(Wang et al., CVPR 2020), the same resize applied to images and to CAMs so an
equivariance loss can compare them; and the two-view batches of the
contrastive methods (SimCLR, MoCo): :func:`check_views`, :func:`random_views`,
:func:`two_view_batch`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_images, check_int, check_maps, check_real
from python_models.augment.crops import random_resized_crops

__all__ = ["check_views", "random_views", "rescale", "two_view_batch"]


def rescale(x: Tensor, scale: float = 0.3, size: tuple[int, int] | None = None) -> Tensor:
    """SEAM's second view: bilinear resize with ``align_corners=True`` to
    ``size``, by default ``(floor(H scale), floor(W scale))`` (what
    ``F.interpolate(scale_factor=0.3)`` gives). Works on images and on maps.

    Example:
        >>> import torch
        >>> x = torch.arange(11.0).view(1, 1, 1, 11).expand(1, 1, 11, 11)
        >>> rescale(x)[0, 0, 0]      # 11 -> 3 samples pixels 0, 5 and 10 exactly
        tensor([ 0.,  5., 10.])
    """
    x = check_maps(x, "x")
    if size is None:
        scale = check_real(scale, "scale", positive=True)
        size = (int(x.shape[2] * scale), int(x.shape[3] * scale))
        if min(size) < 1:
            raise ValueError(f"scale {scale} leaves no pixel of a {tuple(x.shape[2:])} map")
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def check_views(views: object, count: int = 2, name: str = "views") -> list[Tensor]:
    """``count`` views of one batch: a list or tuple of B x 3 x H x W float
    RGB tensors in [0, 1] (or a V x B x 3 x H x W tensor), all with the same
    batch size B (row b of every view comes from image b). Returned as a list."""
    if isinstance(views, Tensor):
        if views.dim() != 5:
            raise ValueError(f"{name} must be a list of B x 3 x H x W tensors or one V x B x 3 x H x W "
                             f"tensor, got shape {tuple(views.shape)}")
        views = list(views.unbind(0))
    if not isinstance(views, (list, tuple)):
        raise TypeError(f"{name} must be a list of {count} image tensors, got {type(views).__name__}")
    if len(views) != count:
        raise ValueError(f"{name} must hold {count} views, got {len(views)}")
    views = [check_images(view, f"{name}[{i}]") for i, view in enumerate(views)]
    sizes = [view.shape[0] for view in views]
    if len(set(sizes)) != 1:
        raise ValueError(f"{name} must all have the same batch size (row b of each view is image b), got {sizes}")
    return views


def random_views(images: Tensor, count: int = 2, generator: torch.Generator | None = None) -> list[Tensor]:
    """``count`` cheap random views of a batch (for examples and tests; the
    published pipelines belong to the data loader): a random resized crop
    (area share in [0.2, 1], MoCo's and NPID's scale) back to the image size
    with a random horizontal flip
    (:func:`python_models.augment.crops.random_resized_crops`), then the
    brightness scaled in [0.7, 1.3] and an offset in [-0.1, 0.1], clamped
    to [0, 1].

    >>> views = random_views(torch.full((2, 3, 8, 8), 0.5), 2, torch.Generator().manual_seed(0))
    >>> len(views), tuple(views[0].shape), bool(views[0].min() >= 0)
    (2, (2, 3, 8, 8), True)
    """
    images = check_images(images)
    count = check_int(count, "count", minimum=1)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    b, size = images.shape[0], images.shape[-1]
    out = []
    for _ in range(count):
        view = random_resized_crops(images, size, (0.2, 1.0), g)
        scale = (0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)).to(images)
        offset = (0.2 * torch.rand(b, 1, 1, 1, generator=g) - 0.1).to(images)
        out.append((view * scale + offset).clamp(0, 1))
    return out


def two_view_batch(batch_size: int, image_size: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """``images`` (B x 3 x S x S synthetic scenes, not read by the losses) and
    ``views`` (2 x B x 3 x S x S: two :func:`random_views` of them, stacked),
    from one generator."""
    # Imported here: python_models.methods imports this module.
    from python_models.methods.base import synthetic_tagged_batch

    g = generator if generator is not None else torch.Generator().manual_seed(0)
    images = synthetic_tagged_batch(batch_size, image_size, 4, g)["images"]
    return {"images": images, "views": torch.stack(random_views(images, 2, g))}
