"""``PAMR``: ``wsss_ext.pamr`` as a module, as single-stage WSSS models hold it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from wsss_ext.ops._checks import check_iterations, check_real
from wsss_ext.ops.pamr import _check_dilations, pamr, resize_image_to_mask


class PAMR(nn.Module):
    """Pixel-adaptive mask refinement: ``forward(image, mask) -> refined mask``.

    Args are those of :func:`wsss_ext.pamr`; the defaults are the paper's
    (1-stage-wseg calls ``PAMR(10, [1, 2, 4, 8, 12, 24])``). RecurSeed's
    constructor defaults are ``PAMR(n_iters=1, dilations=(1,))``.

    ``forward`` resizes the image to the mask's H x W first when they differ
    (bilinear, ``align_corners=True``, as 1-stage-wseg does), so the usual call
    is ``pamr(images, cam_probabilities.detach())`` with full-size images and
    stride-4 masks. The output is differentiable in the mask.

    Example:
        >>> import torch
        >>> from wsss_ext.nn import PAMR
        >>> refine = PAMR()
        >>> refine
        PAMR(n_iters=10, dilations=(1, 2, 4, 8, 12, 24), sigma=0.1)
        >>> images = torch.rand(2, 3, 321, 321)            # a training crop
        >>> masks = torch.softmax(torch.randn(2, 21, 81, 81), dim=1)
        >>> refine(images, masks).shape
        torch.Size([2, 21, 81, 81])
    """

    def __init__(self, n_iters: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), sigma: float = 0.1) -> None:
        super().__init__()
        # Checked here too, so that a bad setting fails where it is made, not at the first call.
        self.n_iters = check_iterations(n_iters, "n_iters")
        self.dilations = tuple(_check_dilations(dilations))
        self.sigma = check_real(sigma, "sigma", positive=True)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        if isinstance(image, Tensor) and isinstance(mask, Tensor) and image.shape[-2:] != mask.shape[-2:]:
            image = resize_image_to_mask(image, mask)
        return pamr(image, mask, self.dilations, self.n_iters, self.sigma)

    def extra_repr(self) -> str:
        return f"n_iters={self.n_iters}, dilations={self.dilations}, sigma={self.sigma}"
