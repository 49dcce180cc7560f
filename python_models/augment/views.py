"""Views of a batch with an exact counterpart on maps: SEAM's rescaled view
(Wang et al., CVPR 2020), the same resize applied to images and to CAMs so an
equivariance loss can compare them."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_maps, check_real

__all__ = ["rescale"]


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
