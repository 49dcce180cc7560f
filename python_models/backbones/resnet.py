"""ResNet with bottleneck or basic blocks (He et al., CVPR 2016) and a
configurable output stride, as WSSS backbones use it (stride 16 for CAMs, 8
for segmentation; 4 for the video correspondence networks' ResNet-18): the
last stages trade their stride for dilation.

Module and parameter names are torchvision's (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so
``model.load_state_dict(torch.load("resnet50-0676ba61.pth"), strict=False)``
loads torchvision's ImageNet weights from a local file (the ``fc`` head is
the only extra).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet18_tiny", "resnet50", "resnet101", "resnet_tiny"]


class BasicBlock(nn.Module):
    """3x3 (stride, dilation) -> 3x3 (dilation) with a residual connection
    (ResNet-18/34, torchvision's ``BasicBlock``)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with a residual connection; stride
    on the 3x3 conv, as torchvision's v1.5."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of bottleneck (default) or basic blocks.

    Args:
        layers: blocks per stage ((3, 4, 6, 3) for ResNet-50).
        output_stride: 32, 16, 8 or 4; stages past it are dilated instead of
            strided (4: stages 2-4 dilated 2, 4, 8, after the stem's stride 4).
        width: channels of the stem and of the first stage's 3x3 convs (64 in
            the paper; small values make CPU-sized models).
        num_classes: size of the ``fc`` head (ImageNet's 1000); ``None`` for none.
        block: :class:`Bottleneck` (ResNet-50/101) or :class:`BasicBlock` (ResNet-18/34).

    ``forward`` returns the last stage's features; ``stages(x)`` returns
    every stage's (stride 4, 8, 16 or less, and the last).
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), output_stride: int = 16, width: int = 64,
                 num_classes: int | None = None, block: type[nn.Module] = Bottleneck) -> None:
        super().__init__()
        if output_stride not in (4, 8, 16, 32):
            raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
        self.block = block
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.output_stride = output_stride
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # Stages 3 and 4 keep stride 2 unless the output stride asks for dilation.
        dilate2, dilate3, dilate4 = output_stride == 4, output_stride <= 8, output_stride <= 16
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2, dilate=dilate2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2, dilate=dilate3)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2, dilate=dilate4)
        self.out_channels = width * 8 * block.expansion
        self.stage_channels = tuple(width * m * block.expansion for m in (1, 2, 4, 8))
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)  # each block starts as the identity
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        block = self.block
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of layer1 .. layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)[-1]

    def load_torchvision(self, path: str | Path) -> list[str]:
        """Load a torchvision ResNet state dict from a local file; returns the
        keys that did not match (the ``fc`` head when ``num_classes`` is None)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        result = self.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ValueError(f"{path} lacks {len(result.missing_keys)} backbone keys, e.g. {result.missing_keys[:3]}")
        return list(result.unexpected_keys)


def resnet50(output_stride: int = 16, width: int = 64, num_classes: int | None = None) -> ResNet:
    """ResNet-50 (torchvision's layout at width 64)."""
    return ResNet((3, 4, 6, 3), output_stride, width, num_classes)


def resnet101(output_stride: int = 16, width: int = 64, num_classes: int | None = None) -> ResNet:
    """ResNet-101 (torchvision's layout at width 64)."""
    return ResNet((3, 4, 23, 3), output_stride, width, num_classes)


def resnet18(output_stride: int = 4, width: int = 64, num_classes: int | None = None) -> ResNet:
    """ResNet-18 (torchvision's layout at width 64: basic blocks, 512 output
    channels), by default at output stride 4 as the video correspondence
    networks use it (CorrFlow, MAST: "ResNet-18 at 1/4 resolution")."""
    return ResNet((2, 2, 2, 2), output_stride, width, num_classes, block=BasicBlock)


def resnet18_tiny(output_stride: int = 4, width: int = 8) -> ResNet:
    """One basic block per stage at a small width, output stride 4: the
    CPU-sized stand-in for ResNet-18 in the video methods' tests and demo."""
    return ResNet((1, 1, 1, 1), output_stride, width, block=BasicBlock)


def resnet_tiny(output_stride: int = 8, width: int = 16) -> ResNet:
    """One block per stage at a small width: a CPU-sized backbone for the
    demo and tests (about 0.3 M parameters at width 16)."""
    return ResNet((1, 1, 1, 1), output_stride, width)
