"""IRNet's two branches (Ahn, Cho & Kwak, "Weakly Supervised Learning of
Instance Segmentation with Inter-pixel Relations", CVPR 2019, Sec. 3;
jiwoon-ahn/irn ``net/resnet50_irn.py``), on the five stages of a ResNet:

- the class-boundary branch: each stage -> 1 x 1 conv to 32 channels ->
  GroupNorm(4) -> (bilinear up-sampling to stride 4) -> ReLU; the five maps
  concatenated (160 channels) -> 1 x 1 conv with bias -> one logit per pixel
  at stride 4 (its sigmoid is the boundary map B);
- the displacement branch: stages 1-3 -> 1 x 1 convs to 64 / 128 / 256
  channels, stages 4-5 -> 256 channels up-sampled to stride 8; stages 3-5
  merged (768 -> 256, up-sampled to stride 4); merged with stages 1-2
  (448 -> 256 -> 2): a 2-channel field (dy, dx) at stride 4, in stride-4
  pixels, from each pixel towards its instance's centroid. In eval mode its
  ``running_mean`` (the mean field over the training images, irn's
  ``MeanShift``) is subtracted.

Stage i's map is up-sampled by an integer factor (``scale_factor``,
align_corners=False) and cropped to the target's size, as irn's
``nn.Upsample(scale_factor)`` then ``[..., :h, :w]``. The branches are trained
on detached backbone features (irn keeps the backbone frozen, in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["DisplacementBranch", "EdgeBranch", "resnet_stage_features", "resnet_stage_strides"]


def resnet_stage_features(backbone: nn.Module, images: Tensor) -> list[Tensor]:
    """IRNet's five stages of a ResNet (irn ``Net.stage1`` .. ``stage5``): the stem
    (conv1, bn1, relu, maxpool; stride 4), layer1 (stride 4), layer2 (8),
    layer3 and layer4, for normalised B x 3 x H x W images.

    Raises:
        TypeError: ``backbone`` lacks a ResNet's stem or layers.
    """
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    missing = [name for name in names if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"backbone {type(backbone).__name__} is not a ResNet: it lacks {missing}")
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    features = [x]
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        x = layer(x)
        features.append(x)
    return features


def resnet_stage_strides(output_stride: int) -> tuple[int, int, int, int, int]:
    """Strides of :func:`resnet_stage_features`' maps for a ResNet at ``output_stride``
    (8, 16 or 32): ``(4, 4, 8, min(16, os), os)``; IRNet's ResNet-50 is at 16."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return (4, 4, 8, min(16, output_stride), output_stride)


def _block(in_channels: int, out_channels: int, groups: int, scale: int) -> nn.Sequential:
    """1 x 1 conv (no bias) -> GroupNorm -> [x scale bilinear] -> ReLU, as irn's fc_edge / fc_dp blocks."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(groups, out_channels)]
    if scale != 1:
        layers.append(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_stages(features: Sequence[Tensor], channels: tuple[int, ...]) -> None:
    if len(features) != 5:
        raise ValueError(f"features must be the five stages' maps, got {len(features)}")
    for index, (feature, expected) in enumerate(zip(features, channels)):
        if not isinstance(feature, Tensor) or feature.dim() != 4 or feature.shape[1] != expected:
            shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
            raise ValueError(f"features[{index}] must be B x {expected} x h x w, got {shape}")


def _crop(x: Tensor, size: torch.Size) -> Tensor:
    return x[..., : size[0], : size[1]]


class EdgeBranch(nn.Module):
    """IRNet's class-boundary branch: ``forward(features) -> logits`` B x 1 x h x w
    at the stride of ``features[1]`` (4); ``torch.sigmoid`` of it is the boundary map.

    Args:
        in_channels: channels of the five stages (ResNet-50: 64, 256, 512, 1024, 2048).
        strides: their strides (:func:`resnet_stage_strides`; ResNet-50 at 16: 4, 4, 8, 16, 16).
        width: channels per stage (irn: 32, GroupNorm with 4 groups).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int] = (4, 4, 8, 16, 16),
                 width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.strides = tuple(in_channels), tuple(strides)
        if len(self.in_channels) != 5 or len(self.strides) != 5:
            raise ValueError("in_channels and strides must name the five stages")
        base = self.strides[1]
        self.stages = nn.ModuleList(_block(c, width, 4, s // base) for c, s in zip(self.in_channels, self.strides))
        self.classifier = nn.Conv2d(5 * width, 1, 1, bias=True)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_stages(features, self.in_channels)
        size = features[1].shape[-2:]
        maps = [_crop(stage(feature), size) for stage, feature in zip(self.stages, features)]
        return self.classifier(torch.cat(maps, 1))


class DisplacementBranch(nn.Module):
    """IRNet's displacement branch: ``forward(features) -> field`` B x 2 x h x w
    (dy, dx in pixels of the stride-4 grid) at the stride of ``features[1]``.

    ``running_mean`` (2,) is subtracted in eval mode only (irn's ``MeanShift``;
    irn sets it once after training to the mean field over its images, see
    :meth:`python_models.methods.IRNet.displacement_mean`).

    Args:
        in_channels: channels of the five stages (ResNet-50: 64, 256, 512, 1024, 2048).
        strides: their strides (ResNet-50 at output stride 16: 4, 4, 8, 16, 16).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int] = (4, 4, 8, 16, 16)) -> None:
        super().__init__()
        self.in_channels, self.strides = tuple(in_channels), tuple(strides)
        if len(self.in_channels) != 5 or len(self.strides) != 5:
            raise ValueError("in_channels and strides must name the five stages")
        c1, c2, c3, c4, c5 = self.in_channels
        _, s2, s3, s4, s5 = self.strides
        self.stage1, self.stage2, self.stage3 = _block(c1, 64, 8, 1), _block(c2, 128, 16, 1), _block(c3, 256, 16, 1)
        self.stage4, self.stage5 = _block(c4, 256, 16, s4 // s3), _block(c5, 256, 16, s5 // s3)
        self.merge_deep = _block(768, 256, 16, s3 // s2)
        self.merge = nn.Sequential(_block(448, 256, 16, 1), nn.Conv2d(256, 2, 1, bias=False))
        self.register_buffer("running_mean", torch.zeros(2))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_stages(features, self.in_channels)
        x1, x2, x3, x4, x5 = features
        d1, d2, d3 = self.stage1(x1), self.stage2(x2), self.stage3(x3)
        d4, d5 = _crop(self.stage4(x4), d3.shape[-2:]), _crop(self.stage5(x5), d3.shape[-2:])
        deep = _crop(self.merge_deep(torch.cat([d3, d4, d5], 1)), d2.shape[-2:])
        field = self.merge(torch.cat([d1, d2, deep], 1))
        if self.training:
            return field
        return field - self.running_mean.to(field.dtype).view(1, 2, 1, 1)
