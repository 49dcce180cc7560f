"""Class activation maps (Zhou et al., CVPR 2016) as WSSS methods compute
them: a backbone, a 1x1 classifier without bias, global average pooling.
Because GAP and the classifier commute, the logits are the spatial mean of
the raw CAMs; ``cams()`` extracts them over scales and flips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CAMNet", "grad_cam"]


class CAMNet(nn.Module):
    """``forward(images) -> logits`` (B x classes) of a GAP classifier.

    Args:
        backbone: a module mapping B x 3 x H x W images to B x C x h x w
            features, with an ``out_channels`` attribute (``python_models.ResNet``).
        num_classes: foreground classes (image-level tags).
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)

    def raw_cams(self, images: Tensor) -> Tensor:
        """B x classes x h x w: the classifier applied at every position."""
        return self.classifier(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.raw_cams(images).mean((2, 3))

    @torch.no_grad()
    def cams(self, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = True,
             size: tuple[int, int] | None = None) -> Tensor:
        """Multi-scale (and flipped) CAMs at ``size`` (default: the images'),
        ReLU'd, summed over scales and flips, each class divided by its max.

        Returns B x classes x H x W in [0, 1].
        """
        size = size or tuple(images.shape[-2:])
        total = None
        for scale in scales:
            scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                             align_corners=False, recompute_scale_factor=False)
            batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
            maps = F.relu(self.raw_cams(batch))
            if flip:
                maps = maps[: len(images)] + maps[len(images) :].flip(-1)
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            total = maps if total is None else total + maps
        return total / total.flatten(2).amax(2).clamp(min=1e-5)[..., None, None]


def grad_cam(model: CAMNet, images: Tensor, class_index: int, layer: nn.Module | None = None) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of one class: the feature maps of
    ``layer`` (default: the backbone's output) weighted by the spatial mean of
    the logit's gradient, ReLU'd. Returns B x h x w."""
    layer = layer or model.backbone
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.setdefault("features", output))
    try:
        logits = model(images)
    finally:
        handle.remove()
    features = captured["features"]
    (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), features)
    weights = gradient.mean((2, 3), keepdim=True)
    return F.relu((weights * features).sum(1)).detach()
